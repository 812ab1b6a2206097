"""CondConv2d and DyConv2d against float64 per-sample references of their papers, timm's CondConv2d, the factory
and the temperature."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import odconv
from odconv import CondConv2d, DyConv2d, ODConv2d, create_dynamic_conv
from odconv_reference import assert_matches_reference, reference_condconv, reference_dyconv, rel_err

# (in, out, kernel, stride, padding, dilation, groups, kernels, batch, height, width)
SHAPES = {
    "3x3": (16, 24, 3, 1, 1, 1, 1, 4, 4, 9, 9),
    "stride2": (16, 32, 3, 2, 1, 1, 1, 8, 3, 11, 11),
    "dilation2": (8, 8, 3, 1, 2, 2, 1, 2, 2, 10, 10),
    "grouped": (16, 32, 3, 1, 1, 1, 4, 4, 3, 7, 7),
    "depthwise": (24, 24, 3, 1, 1, 1, 24, 4, 3, 8, 8),
    "1x1": (32, 16, 1, 1, 0, 1, 1, 8, 3, 6, 6),
    "1x1-56px": (8, 16, 1, 1, 0, 1, 1, 2, 2, 56, 56),
    "one-kernel": (16, 24, 3, 1, 1, 1, 1, 1, 3, 9, 9),
    "batch1": (16, 24, 3, 1, 1, 1, 1, 4, 1, 9, 9),
}
LAYERS = {"condconv": (CondConv2d, reference_condconv), "dyconv": (DyConv2d, reference_dyconv)}


def _layer(kind, shape, bias=False, dtype=torch.float32):
    cin, cout, k, s, p, d, g, kn, *_ = shape
    torch.manual_seed(0)
    n = {"condconv": "num_experts", "dyconv": "kernel_num"}[kind]
    layer = create_dynamic_conv(kind, cin, cout, k, s, p, g, dilation=d, bias=bias, dtype=dtype, **{n: kn})
    with torch.no_grad():  # routing weights far from their initial values, so every expert's share matters
        for prm in layer.attention.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
        if bias:
            layer.bias.normal_()
    if kind == "dyconv":
        layer.update_temperature(1.7)
    return layer


def _check(kind, name, formulation=None, bias=False, dtype=torch.float32, tol=1e-5):
    shape = SHAPES[name]
    layer = _layer(kind, shape, bias, dtype)
    layer.formulation = formulation
    b, h, w = shape[-3:]
    x = torch.randn(b, shape[0], h, w, dtype=dtype)
    if formulation is not None:  # the forced formulation itself ran (forcing one that cannot compute raises)
        assert odconv.explain(layer, x)[0].formulation == formulation
    reference = LAYERS[kind][1]
    assert_matches_reference(layer, x, lambda x64, p: reference(x64, layer, p), tol)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_per_sample_reference_float32(kind, name):
    _check(kind, name)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("formulation", odconv.FORMULATIONS)
def test_every_formulation_computes_the_papers_definition(kind, formulation):
    # feature: layers without spatial attention only (shown on a 1x1); single: one sample only
    name = {"feature": "1x1", "single": "batch1"}.get(formulation, "3x3")
    _check(kind, name, formulation)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_matches_reference_float64_exactly_with_bias(kind):
    _check(kind, "3x3", bias=True, dtype=torch.float64, tol=1e-12)


def test_condconv_equals_timm_condconv_given_the_same_routing():
    from timm import layers as timm_layers
    ran = set()
    for groups in (2, 1):  # grouped and folded compute groups=2; bmm, columns, taps and feature only groups=1
        torch.manual_seed(0)
        ours = CondConv2d(16, 24, 3, stride=2, padding=1, groups=groups, num_experts=8).eval()
        theirs = timm_layers.CondConv2d(16, 24, 3, stride=2, padding=1, groups=groups, num_experts=8).eval()
        with torch.no_grad():  # timm keeps each expert flattened: (num_experts, O * I/g * kh * kw)
            theirs.weight.copy_(ours.weight.flatten(1))
        for batch in (3, 1):  # single: one sample
            x = torch.randn(batch, 16, 13, 13)
            routing = ours.attention(x).kernel
            assert routing.shape == (batch, 8) and 0 < routing.min() and routing.max() < 1  # a sigmoid per expert
            assert not torch.allclose(routing.sum(1), torch.ones(batch))  # ... which need not sum to 1
            shape = odconv.explain(ours, x)[0].shape
            for formulation in odconv.FORMULATIONS:
                if not odconv.formulations.REGISTRY[formulation].can_compute(shape):
                    continue
                ours.formulation = formulation
                assert odconv.explain(ours, x)[0].formulation == formulation
                torch.testing.assert_close(ours(x), theirs(x, routing), rtol=1e-5, atol=1e-5, msg=formulation)
                ran.add(formulation)
            ours.formulation = None
    assert ran == set(odconv.FORMULATIONS)


def test_dyconv_attention_is_a_tempered_softmax_without_normalisation():
    layer = _layer("dyconv", SHAPES["3x3"])
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in layer.modules())
    assert layer.attention.fc1.out_features == 16 // 4 and layer.attention.fc1.bias is None
    x = torch.randn(2, 16, 9, 9)
    layer.update_temperature(1.0)
    sharp = layer.attention(x).kernel
    torch.testing.assert_close(sharp.sum(1), torch.ones(2))
    layer.update_temperature(30.0)
    flat = layer.attention(x).kernel
    assert (flat - 0.25).abs().max() < (sharp - 0.25).abs().max()
    assert "attention.temperature" not in layer.state_dict()  # runtime state, as ODConv's


def test_initialisation_follows_the_reference_code():
    torch.manual_seed(0)
    cond = CondConv2d(64, 256, 3, padding=1)
    dy = DyConv2d(64, 256, 3, padding=1)
    he_std = (2 / (256 * 9)) ** 0.5  # He (fan_out) per kernel, as ODConv2d
    for layer, k in ((cond, 8), (dy, 4)):
        assert layer.weight.shape == (k, 256, 64, 3, 3)
        for i in range(k):
            assert abs(layer.weight[i].std().item() - he_std) < 0.05 * he_std
    assert torch.count_nonzero(cond.attention.fc.bias) == 0
    bound = (6 / (64 + 8)) ** 0.5  # Glorot uniform, the Keras Dense default of the TF reference
    assert cond.attention.fc.weight.abs().max() <= bound and cond.attention.fc.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(dy.attention.fc2.bias) == 0


def test_set_temperature_reaches_dyconv_and_odconv_but_not_condconv():
    model = nn.Sequential(
        ODConv2d(8, 8, 3, padding=1), DyConv2d(8, 8, 3, padding=1), CondConv2d(8, 8, 3, padding=1),
    )
    assert odconv.set_temperature(model, 12.0) == 2
    assert model[0].temperature == 12.0 and model[1].temperature == 12.0
    assert not hasattr(model[2], "temperature")


def test_factory_builds_each_kind_with_its_own_arguments():
    od = create_dynamic_conv("od", 8, 16, 3, padding=1, kernel_num=2, reduction=0.25)
    cond = create_dynamic_conv("condconv", 8, 16, 3, stride=2, num_experts=4)
    dy = create_dynamic_conv("dyconv", 8, 16, 1, kernel_num=3, reduction=2)
    assert type(od) is ODConv2d and od.kernel_num == 2 and od.reduction == 0.25
    assert type(cond) is CondConv2d and cond.num_experts == 4 and cond.stride == (2, 2)
    assert type(dy) is DyConv2d and dy.kernel_num == 3 and dy.attention.fc1.out_features == 4
    assert "num_experts=4" in repr(cond) and "reduction=2" in repr(dy)
    with pytest.raises(ValueError, match="Unknown dynamic conv kind 'cond'"):
        create_dynamic_conv("cond", 8, 16, 3)
    with pytest.raises(ValueError, match=r"CondConv2d \(kind 'condconv'\) does not take \['kernel_num'\]"):
        create_dynamic_conv("condconv", 8, 16, 3, kernel_num=4)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (CondConv2d, dict(num_experts=0), "num_experts must be at least 1"),
        (DyConv2d, dict(kernel_num=0), "kernel_num must be at least 1"),
        (DyConv2d, dict(reduction=0), "reduction must be a positive integer"),
        (CondConv2d, dict(groups=3), "in_channels must be divisible by groups"),
    ],
)
def test_invalid_arguments_raise_value_error(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(8, 8, 3, **kwargs)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_channels_last_and_eval_batch_of_one(kind):
    layer = _layer(kind, SHAPES["3x3"]).eval()
    x = torch.randn(2, 16, 9, 9)
    p = {n: t.detach().double() for n, t in layer.state_dict().items() if t.is_floating_point()}
    ref = LAYERS[kind][1](x.double(), layer, p)
    assert rel_err(layer(x.to(memory_format=torch.channels_last)), ref) < 1e-5
    assert rel_err(layer(x[:1]), ref[:1]) < 1e-5


# Inference (eval, no autograd): the attention's BatchNorm and temperature folded into cached weights, and at
# batch 1 every attention folded into one kernel where the kernel is smaller than the maps. Same results as the
# unfused eval computation (autograd on), for every kind of layer.
INFERENCE_LAYERS = {
    "od-3x3-k1": lambda: ODConv2d(16, 24, 3, padding=1, kernel_num=1),
    "od-3x3-k4-stride2": lambda: ODConv2d(16, 24, 3, stride=2, padding=1, kernel_num=4),
    "od-depthwise": lambda: ODConv2d(24, 24, 3, padding=1, groups=24, kernel_num=1),
    "od-grouped": lambda: ODConv2d(16, 32, 3, padding=1, groups=4, kernel_num=2),
    "od-one-output-per-group": lambda: ODConv2d(16, 8, 3, padding=1, groups=8, kernel_num=1),
    "od-1x1": lambda: ODConv2d(32, 16, 1, kernel_num=1),
    "od-layer-norm-softmax": lambda: ODConv2d(16, 24, 3, padding=1, spatial_act="softmax", attention_norm="layer"),
    "od-no-norm-no-channel": lambda: ODConv2d(16, 24, 3, padding=1, kernel_num=1, attention_norm="none",
                                              attentions=("spatial", "filter")),
    "condconv": lambda: CondConv2d(16, 24, 3, padding=1, num_experts=4),
    "dyconv": lambda: DyConv2d(16, 24, 3, padding=1),
}


def _inference_layer(name):
    torch.manual_seed(0)
    layer = INFERENCE_LAYERS[name]()
    with torch.no_grad():
        for prm in layer.attention.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    if hasattr(layer, "update_temperature"):
        layer.update_temperature(1.7)
    return layer.eval()


def _assert_inference_equals_eval(layer, x):
    expected = layer(x)  # autograd on: the unfused eval computation
    assert expected.requires_grad
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


def _formulations_used(layer, x) -> list[str]:
    with torch.no_grad(), odconv.dispatch.recording() as calls:
        layer(x)
    return [decision.formulation for _, _, decision in calls]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(INFERENCE_LAYERS))
def test_inference_equals_eval_semantics(name, batch):
    layer = _inference_layer(name)
    x = torch.randn(batch, layer.in_channels, 16, 16)
    _assert_inference_equals_eval(layer, x)
    used = _formulations_used(layer, x)  # these kernels are all smaller than their 16x16 maps
    assert (used == ["single"]) == (batch == 1), used
    with torch.inference_mode():  # the usual way to run inference: the same path, the same result
        torch.testing.assert_close(layer(x), layer.train(False)(x))
    if isinstance(layer.attention, odconv.ODAttention):
        assert layer.attention._folded is not None  # cached between calls


def test_a_kernel_larger_than_its_maps_keeps_the_formulations_at_batch_one():
    layer = _inference_layer("od-3x3-k1")
    x = torch.randn(1, 16, 5, 5)  # 3456 kernel elements, 1000 map elements
    _assert_inference_equals_eval(layer, x)
    assert _formulations_used(layer, x) == ["grouped"]
    layer.formulation = "grouped"  # a formulation set on the layer is always honoured
    _assert_inference_equals_eval(layer, torch.randn(1, 16, 12, 12))
    assert _formulations_used(layer, torch.randn(1, 16, 12, 12)) == ["grouped"]


def test_inference_cache_follows_every_change_of_the_weights():
    layer = _inference_layer("od-3x3-k4-stride2")
    x = torch.randn(2, 16, 12, 12)
    _assert_inference_equals_eval(layer, x)
    with torch.no_grad():  # an EMA-style in-place update of an eval-mode model
        for p in layer.parameters():
            p.mul_(0.9).add_(0.1 * torch.randn_like(p))
    _assert_inference_equals_eval(layer, x)
    layer.update_temperature(5.0)
    _assert_inference_equals_eval(layer, x)
    layer.attention.bn.running_var.mul_(3.0)
    _assert_inference_equals_eval(layer, x)
    other = _inference_layer("od-3x3-k4-stride2")
    layer.load_state_dict(other.state_dict())
    _assert_inference_equals_eval(layer, x)
    layer.double()
    _assert_inference_equals_eval(layer, x.double())


def test_training_is_unaffected_by_inference_calls():
    import copy
    import pickle

    layer = _inference_layer("od-3x3-k4-stride2")
    x = torch.randn(4, 16, 12, 12)
    with torch.no_grad():
        layer(x)
    assert copy.deepcopy(layer).attention._folded is None  # copies and pickles never carry the cache
    assert pickle.loads(pickle.dumps(layer)).attention._folded is None
    layer.train()
    assert layer.attention._folded is None
    with torch.no_grad():  # train mode without autograd still uses the batch statistics, not the cache
        y = layer(x)
    from odconv_reference import float64_params, reference_odconv

    ref = reference_odconv(x.double(), layer, float64_params(layer), training=True)
    assert rel_err(y, ref) < 1e-5
