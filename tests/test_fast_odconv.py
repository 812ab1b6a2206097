"""Every ODConv formulation against the float64 per-sample reference (also with attentions absent, as CondConv and
DyConv call the core), forcing a formulation, explain, and torch.compile."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the zoo)
import odconv
from odconv import ODConv2d
from odconv.dispatch import use_formulation
from odconv.explain import explain, format_explain
from odconv.formulations import FORMULATIONS, REGISTRY, LayerShape, supported
from odconv_reference import float32_error_bound, float64_params, reference_odconv, rel_err
from test_odconv import SHAPES, _layer

# More shapes than test_odconv's, where the formulations differ: zero-size padding with stride, odd sizes, 1x1 strided.
FAST_SHAPES = dict(SHAPES, **{
    "3x3-k1-stride2-odd": (8, 16, 3, 2, 1, 1, 1, 1, 4, 7, 5),
    "1x1-k4-stride2": (16, 8, 1, 2, 0, 1, 1, 4, 4, 7, 7),
    "3x3-no-padding": (8, 8, 3, 1, 0, 1, 1, 2, 4, 6, 6),
    # Maps smaller than the kernel: most taps only see padding (`taps` leaves them out of its GEMM).
    "3x3-on-1x1-map": (16, 16, 3, 1, 1, 1, 1, 1, 4, 1, 1),
    "3x3-k4-on-2x1-map": (8, 8, 3, 1, 1, 1, 1, 4, 4, 2, 1),
})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: a second intra-op thread only adds OpenMP barriers, which on a loaded machine
    # made a grouped conv over 96 groups take 10 s instead of 0.05 s.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rules_dispatch():
    """The rules for the test's duration, the previous mode restored even when the test fails."""
    previous = odconv.set_dispatch("rules")
    try:
        yield
    finally:
        odconv.set_dispatch(previous)


def _layer_computes(formulation: str, layer, x) -> bool:
    """Whether `formulation` can compute `layer` at input `x` (the real call's shape, batch included)."""
    return REGISTRY[formulation].can_compute(layer.layer_shape(x))


def _ran(layer, x, training) -> str:
    """The formulation a forward of `layer` at `x` ran (as the dispatch recorded it)."""
    layer.train(training)
    return explain(layer, x)[0].formulation


def _run(layer, x, training, formulation, grad_out=None):
    layer.train(training)
    layer.formulation = formulation
    x = x.detach().requires_grad_()
    y = layer(x)
    if grad_out is None:
        torch.manual_seed(1)
        grad_out = torch.randn(y.shape, dtype=y.dtype)
    y.backward(grad_out)
    return x, y, grad_out


def _errors(layer, x, y, grad_out, training, dtype) -> dict[str, float]:
    """Relative errors of y and every gradient against the per-sample reference run in `dtype`."""
    p = {n: v.to(dtype).detach().requires_grad_(v.requires_grad) for n, v in float64_params(layer).items()}
    x_ref = x.detach().to(dtype).requires_grad_()
    y_ref = reference_odconv(x_ref, layer, p, training)
    y_ref.backward(grad_out.to(dtype))
    errors = {"output": rel_err(y, y_ref), "input grad": rel_err(x.grad, x_ref.grad)}
    errors.update({f"grad of {n}": rel_err(prm.grad, p[n].grad) for n, prm in layer.named_parameters()})
    return errors


def _check_against_reference(layer, x, training, formulation, float64_tol=1e-12):
    """Output and every gradient against the float64 reference: within
    `float32_error_bound` (derived from the computation, the same on every CPU) for float32 ones; `float64_tol` for
    float64 inputs (exactness)."""
    x, y, grad_out = _run(layer, x, training, formulation)
    errors = _errors(layer, x, y, grad_out, training, torch.float64)
    if x.dtype == torch.float32:
        allowed = float32_error_bound(layer, x, grad_out, lambda x64, p: reference_odconv(x64, layer, p, training))
    else:
        allowed = dict.fromkeys(errors, float64_tol)
    bad = {k: (v, allowed[k]) for k, v in errors.items() if not v < allowed[k]}
    assert not bad, f"{formulation}: (relative error, allowed) above rounding: {bad}"


def _cases():
    for f in FORMULATIONS:
        for name, shape in FAST_SHAPES.items():
            cin, cout, k, *_ = shape
            g = shape[6]
            if supported(f, g, k != 1 and k != (1, 1)):
                yield f, name


CASES = list(_cases())


def _check_grid_case(formulation, name, training, dtype):
    """One case of the grid: the shape's layer and a seeded input in `dtype`, against the reference."""
    shape = FAST_SHAPES[name]
    b, h, w = shape[-3:]
    torch.manual_seed(2)
    x = torch.randn(b, shape[0], h, w, dtype=dtype)
    _check_against_reference(_layer(shape).to(dtype), x, training, formulation)


GRID = pytest.mark.parametrize("formulation,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
TRAIN_EVAL = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


@TRAIN_EVAL
@GRID
def test_formulation_matches_float64_reference(formulation, name, training):
    _check_grid_case(formulation, name, training, torch.float32)


@TRAIN_EVAL
@GRID
def test_formulation_is_exact_in_float64(formulation, name, training):
    # In float64 any slip in a hand-derived gradient shows as an error far above rounding (1e-12): the check of
    # correctness, on the same grid as the float32 one above, which checks the float32 path stays within its bound.
    _check_grid_case(formulation, name, training, torch.float64)


CL_CASES = [(f, n) for f, n in CASES if n in ("3x3", "1x1-k4", "depthwise", "stride2")]


@pytest.mark.parametrize("formulation,name", CL_CASES, ids=[f"{f}-{n}" for f, n in CL_CASES])
def test_channels_last_input(formulation, name):
    shape = FAST_SHAPES[name]
    b, h, w = shape[-3:]
    x = torch.randn(b, shape[0], h, w).to(memory_format=torch.channels_last)
    _check_against_reference(_layer(shape), x, True, formulation)


# Batch 1, where `single` (the rules' pick for batch-1 inference) is the only formulation that runs only here.
ONE_SAMPLE = ("3x3", "1x1-k1", "1x1-k4", "depthwise", "grouped", "5x5-odd", "3x3-on-1x1-map")


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_batch_of_one_in_eval_mode(formulation):
    checked = []
    for name in ONE_SAMPLE:
        shape = FAST_SHAPES[name]
        layer, x = _layer(shape), torch.randn(1, shape[0], *shape[-2:])
        if _layer_computes(formulation, layer, x):
            layer.formulation = formulation
            assert _ran(layer, x, False) == formulation
            _check_against_reference(layer, x, False, formulation)
            checked.append(name)
    assert checked, f"{formulation} computed none of {ONE_SAMPLE} at batch 1"


# Every ablation variant of the attention (heads present or absent, softmax spatial attention, each norm), one
# sample, eval: `single` folds whichever attentions exist into its one kernel.
ATTENTION_SUBSETS = {
    "all": {}, "no-channel": dict(attentions=["filter", "spatial", "kernel"]),
    "no-filter": dict(attentions=["channel", "spatial", "kernel"]),
    "no-spatial": dict(attentions=["channel", "filter", "kernel"]), "kernel-only": dict(attentions=["kernel"]),
    "channel-only": dict(attentions=["channel"], kernel_num=1), "spatial-softmax": dict(spatial_act="softmax"),
    "layer-norm": dict(attention_norm="layer"), "no-norm": dict(attention_norm="none"),
}


@pytest.mark.parametrize("subset", list(ATTENTION_SUBSETS))
def test_single_with_every_attention_subset_at_batch_one(subset):
    kwargs = dict(dict(kernel_num=3), **ATTENTION_SUBSETS[subset])
    torch.manual_seed(4)
    layer = ODConv2d(8, 12, 3, padding=1, **kwargs)
    with torch.no_grad():
        for prm in layer.attention.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    layer.formulation = "single"
    x = torch.randn(1, 8, 7, 7)
    assert _ran(layer, x, False) == "single"
    _check_against_reference(layer, x, False, "single")


BF16_CASES = [(f, b) for f in FORMULATIONS for b in (4, 1) if not (f == "single" and b > 1)]  # single: one sample


@pytest.mark.parametrize("formulation,batch", BF16_CASES, ids=[f"{f}-{b}" for f, b in BF16_CASES])
def test_bf16_autocast_within_bf16_tolerance(formulation, batch):
    checked = []
    training = batch > 1  # one sample: inference (the attention's BatchNorm cannot train on one sample)
    for name in ("3x3", "1x1-k4", "depthwise"):
        shape = FAST_SHAPES[name]
        layer = _layer(shape)
        x = torch.randn(batch, shape[0], *shape[-2:])
        if not _layer_computes(formulation, layer, x):
            continue
        checked.append(name)
        layer.formulation = formulation
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _ran(layer, x, training) == formulation
        x32, y32, g = _run(layer, x, training, formulation)
        grads32 = {n: p.grad.clone() for n, p in layer.named_parameters()}
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb, yb, _ = _run(layer, x, training, formulation, grad_out=g)
        assert yb.dtype == torch.bfloat16
        # bf16 keeps 8 bits of mantissa: 2^-8 = 4e-3 per rounding; sums over a few hundred terms stay below 3e-2.
        assert rel_err(yb, y32) < 3e-2, f"{formulation} {name}: output {rel_err(yb, y32)}"
        assert rel_err(xb.grad, x32.grad) < 3e-2
        for n, p in layer.named_parameters():
            assert p.grad.dtype == torch.float32, f"grad of {n} is {p.grad.dtype}"
            assert rel_err(p.grad, grads32[n]) < 5e-2, f"{formulation} {name}: grad of {n} {rel_err(p.grad, grads32[n])}"
    assert checked, f"{formulation} computed none of the bf16 cases at batch {batch}"


def _saved_bytes(layer, x) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.requires_grad_())
    return sum(storages.values())


def test_custom_backward_saves_less_than_the_released_formulation():
    layer = ODConv2d(64, 64, 3, padding=1, kernel_num=4).train()
    x = torch.randn(8, 64, 8, 8)
    layer.formulation = "grouped"
    released = _saved_bytes(layer, x)
    for f in ("folded", "bmm", "taps"):
        layer.formulation = f
        assert _saved_bytes(layer, x) < released / 2, f
    # `columns` keeps its K pre-mix GEMM outputs (K times the output): less than the per-sample kernels here.
    layer.formulation = "columns"
    assert _saved_bytes(layer, x) < released


def test_forcing_a_formulation_by_attribute_and_context(monkeypatch):
    layer = _layer(FAST_SHAPES["3x3"])
    x = torch.randn(4, 16, 9, 9)
    seen = []
    entry = REGISTRY["grouped"]

    def spy(*args):
        seen.append("grouped")
        return entry.fn(*args)
    monkeypatch.setitem(REGISTRY, "grouped", entry._replace(fn=spy))
    with use_formulation("grouped"):
        layer(x)
    assert seen == ["grouped"]
    layer.formulation = "columns"  # the layer's own choice wins over the context
    with use_formulation("grouped"):
        layer(x)
    assert seen == ["grouped"]


def test_forcing_a_formulation_that_cannot_compute_the_layer_is_an_error_naming_both():
    grouped = _layer(FAST_SHAPES["grouped"])
    x = torch.randn(2, 16, 7, 7)
    grouped.formulation = "columns"
    with pytest.raises(ValueError, match=r"'columns' cannot compute a 3x3 conv 16->32 \(groups 4, .*"
                                         r"formulations that can: \['grouped', 'folded'"):
        grouped(x)
    grouped.formulation = None
    with use_formulation("taps"), pytest.raises(ValueError, match="'taps' cannot compute a 3x3 conv 16->32"):
        grouped(x)
    layer = _layer(FAST_SHAPES["3x3"]).eval()
    layer.formulation = "single"
    with pytest.raises(ValueError, match="'single' cannot compute .* on a batch of 2 at 9x9"):
        layer(torch.randn(2, 16, 9, 9))
    assert layer(torch.randn(1, 16, 9, 9)).shape == (1, 24, 9, 9)


def test_unknown_formulation_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown ODConv formulation 'fast'"):
        with use_formulation("fast"):
            pass
    layer = _layer(FAST_SHAPES["3x3"])
    layer.formulation = "fast"
    with pytest.raises(ValueError, match="Unknown ODConv formulation"):
        layer(torch.randn(2, 16, 5, 5))


def test_explain_reports_every_layer_and_honours_forcing(rules_dispatch):
    model = timm.create_model("od_resnet18", kernel_num=1, num_classes=10).eval()
    rows = explain(model, torch.randn(2, 3, 32, 32))
    n_od = sum(isinstance(m, ODConv2d) for m in model.modules())
    assert len(rows) == n_od == 16
    assert {r.formulation for r in rows} <= set(FORMULATIONS) and {r.reason for r in rows} == {"rule"}
    assert rows[0].layer == "layer1.0.conv1" and rows[0].shape.height == 8
    model.get_submodule("layer1.0.conv1").formulation = "grouped"
    with use_formulation("bmm"):
        forced = explain(model, torch.randn(2, 3, 32, 32))
    assert forced[0].formulation == "grouped" and all(r.formulation == "bmm" for r in forced[1:])
    assert all(r.reason == "forced" for r in forced)
    table = format_explain(rows)
    assert "layer1.0.conv1" in table and " rule" in table


@pytest.mark.slow
def test_torch_compile_full_graph_matches_eager():
    torch._dynamo.reset()
    for f in (None, "columns", "folded"):
        layer = _layer(FAST_SHAPES["3x3"]).train()
        layer.formulation = f
        x = torch.randn(4, 16, 9, 9)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        y_c = compiled(x)
        y_c.sum().backward()
        g_c = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        y = layer(x)
        y.sum().backward()
        assert rel_err(y_c, y) < 1e-6
        for a, p in zip(g_c, layer.parameters()):
            assert rel_err(a, p.grad) < 1e-5


# The functional core with attentions absent (None = 1), as CondConv and DyConv call it (kernel attention only).
# (in, out, kernel, stride, padding, groups, kernel_num, batch, size)
CORE_SHAPES = {
    "3x3": (8, 12, 3, 1, 1, 1, 3, 3, 7),
    "3x3-stride2": (8, 12, 3, 2, 1, 1, 2, 3, 7),
    "1x1": (12, 8, 1, 1, 0, 1, 3, 3, 5),
    "grouped": (8, 12, 3, 1, 1, 2, 2, 3, 6),
    "depthwise": (8, 8, 3, 1, 1, 8, 2, 3, 6),
    # One sample: every formulation, `single` (the kernel with every attention folded in) included.
    "3x3-one-sample": (8, 12, 3, 2, 1, 1, 3, 1, 7),
    "grouped-one-sample": (8, 12, 3, 1, 1, 2, 2, 1, 6),
    "depthwise-one-sample": (8, 8, 3, 1, 1, 8, 2, 1, 6),
    "1x1-one-sample": (12, 8, 1, 1, 0, 1, 3, 1, 5),
}
SUBSETS = {  # which of channel, filter, spatial, kernel the call has
    "kernel-only": "k", "no-channel": "fsk", "channel-only": "c", "none": "", "channel-filter": "cf",
}


def _reference_core(x, weight, channel, filt, spatial, kernel, stride, padding, groups):
    """The equation, one sample at a time: y[b] = a_f * conv(x[b] * a_c, sum_i a_k[i] * a_s * W_i)."""
    outs = []
    for b in range(x.shape[0]):
        k = weight.shape[0] if kernel is not None else 1
        w = sum((kernel[b, i] if kernel is not None else 1.0) * weight[i] for i in range(k))
        if spatial is not None:
            w = w * spatial[b]
        xb = x[b: b + 1] if channel is None else x[b: b + 1] * channel[b].view(1, -1, 1, 1)
        y = F.conv2d(xb, w, None, stride, padding, 1, groups)
        outs.append(y if filt is None else y * filt[b].view(1, -1, 1, 1))
    return torch.cat(outs)


def _core_inputs(shape_name, subset):
    cin, cout, k, s, p, g, kn, b, n = CORE_SHAPES[shape_name]
    kn = kn if "k" in subset else 1
    torch.manual_seed(3)
    pos = dict(dtype=torch.float64)
    x = torch.randn(b, cin, n, n, **pos)
    weight = torch.randn(kn, cout, cin // g, k, k, **pos)
    channel = torch.rand(b, cin, **pos) + 0.5 if "c" in subset else None
    filt = torch.rand(b, cout, **pos) + 0.5 if "f" in subset else None
    spatial = torch.rand(b, k, k, **pos) + 0.5 if "s" in subset and k > 1 else None
    kernel = torch.softmax(torch.randn(b, kn, **pos), 1) if "k" in subset else None
    tensors = [t if t is None else t.requires_grad_() for t in (x, weight, channel, filt, spatial, kernel)]
    return tensors, ((s, s), (p, p), (1, 1), g)


def _computes(formulation, name, subset) -> bool:
    tensors, (stride, _, _, groups) = _core_inputs(name, SUBSETS[subset])
    return REGISTRY[formulation].can_compute(LayerShape.of_call(*tensors, stride, groups))


CORE_CASES = [(f, n, a) for n in CORE_SHAPES for a in SUBSETS for f in FORMULATIONS if _computes(f, n, a)]


@pytest.mark.parametrize("formulation,name,subset", CORE_CASES, ids=[f"{f}-{n}-{a}" for f, n, a in CORE_CASES])
def test_core_with_absent_attentions_matches_float64_reference(formulation, name, subset):
    tensors, (stride, padding, dilation, groups) = _core_inputs(name, SUBSETS[subset])
    y = odconv.odconv2d(*tensors, stride, padding, dilation, groups, None, formulation)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in tensors if t is not None], g)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y_ref = _reference_core(*leaves, stride, padding, groups)
    grads_ref = torch.autograd.grad(y_ref, [t for t in leaves if t is not None], g)
    assert rel_err(y, y_ref) < 1e-12, f"output {rel_err(y, y_ref)}"
    names = [n for n, t in zip(("x", "weight", "channel", "filt", "spatial", "kernel"), tensors) if t is not None]
    for n, a, r in zip(names, grads, grads_ref):
        assert rel_err(a, r) < 1e-12, f"grad of {n}: {rel_err(a, r)}"
