"""ODConv, CondConv and DyConv in 1-D and 3-D against the float64 per-sample reference (F.conv1d / F.conv3d), under
every formulation that claims to compute the call; their parameter names and shapes; the dispatch of 3-D calls;
the factory's `dims`; conversion of 1-D and 3-D networks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import odconv
from odconv import (CondConv1d, CondConv3d, DyConv1d, DyConv3d, ODConv1d, ODConv2d, ODConv3d, create_dynamic_conv,
                    set_temperature)
from odconv.dispatch import choose, use_formulation
from odconv.formulations import FORMULATIONS, REGISTRY
from odconv_reference import (float32_error_bound, float64_params, reference_condconv, reference_dyconv,
                              reference_odconv, rel_err)
from test_dispatch import fresh  # noqa: F401  (the measured-dispatch fixture)
from test_fast_odconv import ATTENTION_SUBSETS

# (in, out, kernel, stride, padding, dilation, groups, kernel_num, batch, *spatial size). Batch 4 for the
# attention BatchNorm in train mode (see tests/test_odconv.py); batch 1 where `single` computes the call.
SHAPES = {
    1: {
        "k3": (8, 12, 3, 1, 1, 1, 1, 4, 4, 11),
        "k5-stride2-dilation2": (8, 12, 5, 2, 4, 2, 1, 3, 4, 13),
        "grouped": (8, 12, 3, 1, 1, 1, 4, 2, 4, 9),
        "depthwise-stride2": (8, 8, 3, 2, 1, 1, 8, 2, 4, 10),
        "k1": (12, 8, 1, 1, 0, 1, 1, 3, 4, 7),
        "k3-one-sample": (8, 12, 3, 1, 1, 1, 1, 3, 1, 9),
    },
    3: {
        "k3": (4, 8, 3, 1, 1, 1, 1, 3, 4, 3, 4, 4),
        "rect-stride-dilation": (4, 6, (3, 1, 3), (2, 1, 1), (2, 0, 1), (2, 1, 1), 1, 2, 4, 5, 3, 4),
        "grouped": (4, 8, 3, 1, 1, 1, 2, 2, 4, 3, 3, 4),
        "depthwise": (6, 6, 3, 1, 1, 1, 6, 2, 4, 3, 4, 3),
        "k1": (8, 4, 1, 1, 0, 1, 1, 3, 4, 3, 3, 3),
        "k3-one-sample": (4, 8, 3, 1, 1, 1, 1, 3, 1, 3, 4, 4),
    },
}
ODCONVS = {1: ODConv1d, 3: ODConv3d}
OTHERS = {("condconv", 1): (CondConv1d, reference_condconv), ("condconv", 3): (CondConv3d, reference_condconv),
          ("dyconv", 1): (DyConv1d, reference_dyconv), ("dyconv", 3): (DyConv3d, reference_dyconv)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()  # tiny tensors: a second thread only adds barriers (see test_fast_odconv.py)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(layer: nn.Module, temperature: float = 1.7) -> nn.Module:
    """Attentions far from their initial values and non-trivial BN statistics, so every factor matters."""
    with torch.no_grad():
        for prm in layer.attention.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        bn = getattr(layer.attention, "bn", None)
        if bn is not None:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        if layer.bias is not None:
            layer.bias.normal_()
    if hasattr(layer, "update_temperature"):
        layer.update_temperature(temperature)
    return layer


def _odconv(dims, name, **kwargs):
    cin, cout, k, s, p, d, g, kn = SHAPES[dims][name][:8]
    torch.manual_seed(0)
    return _perturbed(ODCONVS[dims](cin, cout, k, s, p, d, g, **dict(dict(kernel_num=kn), **kwargs)))


def _input(dims, name, dtype=torch.float32):
    shape = SHAPES[dims][name]
    torch.manual_seed(2)
    return torch.randn(shape[8], shape[0], *shape[9:], dtype=dtype)


def _check(layer, x, reference, formulation, training):
    """Forward and every gradient of `layer` (forced to `formulation`, None = the dispatch) against `reference` in
    float64: within the derived float32 error bound for float32 inputs, 1e-12 for float64 ones."""
    layer.zero_grad(set_to_none=True)
    layer.train(training)
    layer.formulation = formulation
    if formulation is not None:  # the forced formulation itself ran
        assert odconv.explain(layer, x)[0].formulation == formulation
    x = x.detach().requires_grad_()
    y = layer(x)
    torch.manual_seed(1)
    grad_out = torch.randn(y.shape, dtype=y.dtype)
    y.backward(grad_out)
    p = float64_params(layer)
    x64 = x.detach().double().requires_grad_()
    y_ref = reference(x64, p)
    y_ref.backward(grad_out.double())
    assert y.shape == y_ref.shape
    errors = {"output": rel_err(y, y_ref), "input grad": rel_err(x.grad, x64.grad)}
    errors.update({f"grad of {n}": rel_err(prm.grad, p[n].grad) for n, prm in layer.named_parameters()})
    if x.dtype == torch.float32:
        allowed = float32_error_bound(layer, x, grad_out, reference)
    else:
        allowed = dict.fromkeys(errors, 1e-12)
    bad = {k: (v, allowed[k]) for k, v in errors.items() if not v < allowed[k]}
    assert not bad, f"{formulation}: (relative error, allowed) above rounding: {bad}"


def _computes(formulation, layer, x) -> bool:
    return REGISTRY[formulation].can_compute(layer.layer_shape(x))


def _od_cases():
    for dims, shapes in SHAPES.items():
        for name in shapes:
            layer, x = _odconv(dims, name), _input(dims, name)
            for f in FORMULATIONS:
                if _computes(f, layer, x):
                    # One sample trains only without the released attention BatchNorm: eval mode then.
                    for training in ((True, False) if x.shape[0] > 1 else (False,)):
                        yield dims, name, f, training


OD_CASES = list(_od_cases())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("dims,name,formulation,training", OD_CASES,
                         ids=[f"{d}d-{n}-{f}-{'train' if t else 'eval'}" for d, n, f, t in OD_CASES])
def test_odconv_nd_matches_float64_reference(dims, name, formulation, training, dtype):
    layer = _odconv(dims, name).to(dtype)
    _check(layer, _input(dims, name, dtype), lambda x64, p: reference_odconv(x64, layer, p, training), formulation,
           training)


def test_which_formulations_compute_1d_and_3d_calls():
    # 1-D layers run as 2-D calls over a (1, L) map: every formulation computes what it computes in 2-D. 3-D
    # calls: the per-sample-kernel formulations written over N spatial dimensions.
    computed = {dims: {f for d, _, f, _ in OD_CASES if d == dims} for dims in SHAPES}
    assert {"grouped", "folded", "bmm", "feature", "columns", "taps", "single"} <= computed[1]
    assert {"grouped", "folded", "single"} <= computed[3]
    assert not computed[3] & {"bmm", "feature", "columns", "taps"}


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("subset", list(ATTENTION_SUBSETS))
def test_odconv_nd_every_attention_subset(dims, subset):
    kwargs = dict(dict(kernel_num=3), **ATTENTION_SUBSETS[subset])
    name = "k3"
    cin, cout, k, s, p = SHAPES[dims][name][:5]
    torch.manual_seed(4)
    layer = _perturbed(ODCONVS[dims](cin, cout, k, s, p, **kwargs))
    x = _input(dims, name)
    for training in (True, False):
        _check(layer, x, lambda x64, p, t=training: reference_odconv(x64, layer, p, t), None, training)


def _other_cases():
    for (kind, dims), (cls, _) in OTHERS.items():
        for name in ("k3", "grouped", "k1", "k3-one-sample"):
            cin, cout, k, s, p, d, g, kn = SHAPES[dims][name][:8]
            layer, x = cls(cin, cout, k, s, p, d, g, kn), _input(dims, name)
            for f in FORMULATIONS:
                if _computes(f, layer, x):
                    yield kind, dims, name, f


OTHER_CASES = list(_other_cases())


@pytest.mark.parametrize("kind,dims,name,formulation", OTHER_CASES,
                         ids=[f"{k}-{d}d-{n}-{f}" for k, d, n, f in OTHER_CASES])
def test_condconv_and_dyconv_nd_match_float64_reference(kind, dims, name, formulation):
    cls, reference = OTHERS[(kind, dims)]
    cin, cout, k, s, p, d, g, kn = SHAPES[dims][name][:8]
    torch.manual_seed(0)
    layer = _perturbed(cls(cin, cout, k, s, p, d, g, kn, bias=True))
    x = _input(dims, name)
    _check(layer, x, lambda x64, p: reference(x64, layer, p), formulation, training=True)
    _check(layer.double(), x.double(), lambda x64, p: reference(x64, layer, p), formulation, training=True)


@pytest.mark.parametrize("dims", [1, 3])
def test_parameters_keep_the_2d_names_with_nd_shapes(dims):
    k = (3,) * dims
    layer = ODCONVS[dims](16, 32, 3, groups=2, kernel_num=4)
    twin = ODConv2d(16, 32, 3, groups=2, kernel_num=4)
    assert set(layer.state_dict()) == set(twin.state_dict())
    assert layer.weight.shape == (4, 32, 8, *k)
    att = layer.attention
    conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
    assert type(att.fc) is conv and type(att.bn) is bn and type(att.spatial_fc) is conv
    assert att.spatial_fc.out_channels == 3 ** dims and att.fc.weight.shape == (16, 16, *(1,) * dims)
    assert ODCONVS[dims](16, 32, 1).attention.spatial_fc is None  # 1x1: no spatial head, as released
    assert CondConv3d(8, 8, 3, num_experts=3).weight.shape == (3, 8, 8, 3, 3, 3)
    assert DyConv1d(8, 8, 5).weight.shape == (4, 8, 8, 5)
    assert not isinstance(layer, ODConv2d)


def test_3d_dispatch_rules_and_forcing_errors():
    layer, x = _odconv(3, "k3"), _input(3, "k3")
    layer.train()
    rows = odconv.explain(layer, x)
    assert rows[0].formulation == "grouped" and rows[0].shape.depth == 3 and rows[0].shape.dims == 3
    assert "3x4x4   3  1     1  3  grouped" in odconv.format_explain(rows)
    one_d = odconv.format_explain(odconv.explain(_odconv(1, "k5-stride2-dilation2"), _input(1, "k5-stride2-dilation2")))
    assert "1x13     5  2" in one_d  # a 1-D call as the 2-D call it runs as: a (1, 13) map, its kernel and stride
    assert choose(_odconv(3, "depthwise").layer_shape(x[:, :6])) == "folded"
    layer.eval()  # one sample, inference, the kernel (8*4*27) no larger than the maps ((4+8)*3*6*6): `single`
    assert odconv.explain(layer, torch.randn(1, 4, 3, 6, 6))[0].formulation == "single"
    assert odconv.explain(layer, torch.randn(1, 4, 3, 4, 4))[0].formulation == "grouped"
    for f in ("bmm", "feature", "columns", "taps"):
        layer.formulation = f
        with pytest.raises(ValueError, match=rf"'{f}' cannot compute a 3x3x3 conv 4->8 .* on a batch of 4 at "
                                             r"3x4x4; formulations that can: \['grouped', 'folded'"):
            layer(x)
    layer.formulation = None
    with use_formulation("taps"), pytest.raises(ValueError, match="'taps' cannot compute a 3x3x3 conv"):
        layer(x)


def test_measured_dispatch_times_3d_and_1d_calls(fresh):  # noqa: F811
    fresh.times = {"folded": 0.001}
    for dims in (1, 3):
        layer, x = _odconv(dims, "k3"), _input(dims, "k3")
        row = odconv.explain(layer.train(), x)[0]
        assert (row.formulation, row.reason) == ("folded", "measured")
        expected = {"grouped", "folded"} if dims == 3 else {"grouped", "folded", "bmm", "columns", "taps"}
        assert set(row.times) == expected


def test_functional_1d_and_3d_match_the_layers():
    for dims, fn, name in ((1, odconv.odconv1d, "k5-stride2-dilation2"), (3, odconv.odconv3d, "rect-stride-dilation")):
        layer, x = _odconv(dims, name), _input(dims, name)
        layer.eval()
        with torch.no_grad():
            att = layer.attention(x)
            y = fn(x, layer.weight, att.channel, att.filter, att.spatial, att.kernel, layer.stride, layer.padding,
                   layer.dilation, layer.groups)
            assert rel_err(y, layer(x)) < 1e-6
    with pytest.raises(ValueError, match="odconv1d needs a 3-D input"):
        odconv.odconv1d(torch.randn(2, 4, 5, 5), torch.randn(1, 4, 4, 3), None, None, None, None)


def test_wrong_input_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ODConv1d expects a \(batch, channels, length\) input of 3 dimensions"):
        ODConv1d(4, 4, 3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"DyConv3d expects a \(batch, channels, depth, height, width\) input"):
        DyConv3d(4, 4, 3)(torch.randn(2, 4, 5, 5))


def test_factory_dims_and_temperature():
    for dims, kinds in ((1, (ODConv1d, CondConv1d, DyConv1d)), (3, (ODConv3d, CondConv3d, DyConv3d))):
        for kind, cls in zip(("od", "condconv", "dyconv"), kinds):
            assert type(create_dynamic_conv(kind, 8, 8, 3, padding=1, dims=dims)) is cls
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3, got 4"):
        create_dynamic_conv("od", 8, 8, 3, dims=4)
    model = nn.Sequential(ODConv1d(8, 8, 3), DyConv3d(8, 8, 3), CondConv1d(8, 8, 3))
    assert set_temperature(model, 7.0) == 2
    assert model[0].temperature == 7.0 and model[1].temperature == 7.0


def _net(dims):
    conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
    torch.manual_seed(0)
    return nn.Sequential(conv(2, 8, 3, padding=1), bn(8), nn.ReLU(), conv(8, 16, 3, stride=2, padding=1, bias=True),
                         bn(16), nn.ReLU(), conv(16, 16, 1), nn.Flatten(1))


@pytest.mark.parametrize("dims", [1, 3])
def test_convert_replaces_conv1d_and_conv3d(dims):
    model = _net(dims)
    x = torch.randn(4, 2, *(6,) * dims)
    static = model(x)
    od = odconv.convert(model, kernel_num=2, init_from_weight=True)
    cls = ODCONVS[dims]
    assert type(od[0]) is not cls  # the stem stays static
    assert type(od[3]) is cls and type(od[6]) is cls and od[3].stride == (2,) * dims and od[3].bias is not None
    assert torch.equal(od[3].weight[1], _net(dims)[3].weight.detach())
    y = od(x)
    assert y.shape == static.shape
    y.sum().backward()
    assert od[3].weight.grad is not None


def test_convert_keeps_other_dimensions_static_unless_asked():
    class Net(nn.Module):  # a 2-D CNN with an ECA-style channel attention (a Conv1d over channels)
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)

        def forward(self, x):
            y = self.conv(self.stem(x))
            a = torch.sigmoid(self.eca(y.mean((2, 3))[:, None])).view(y.shape[0], -1, 1, 1)
            return y * a
    model = odconv.convert(Net())
    assert type(model.conv) is ODConv2d and type(model.eca) is nn.Conv1d
    model = odconv.convert(Net(), dims=(1, 2), min_channel=4)
    assert type(model.conv) is ODConv2d and type(model.eca) is ODConv1d
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 8, 5, 5)
    with pytest.raises(ValueError, match="dims must name 1, 2 or 3"):
        odconv.convert(Net(), dims=(4,))
