"""ODConv2d's ablation switches: each changes the computation as stated, and the defaults are the released layer."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from odconv import ODConv2d
from odconv_reference import assert_matches_reference, per_sample_conv, reference_odconv

CIN, COUT, B, H = 16, 24, 4, 9


def _layer(kernel_num=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = ODConv2d(CIN, COUT, 3, padding=1, kernel_num=kernel_num, **kwargs)
    with torch.no_grad():  # attentions far from their initial values, so every factor matters
        for prm in layer.attention.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        if layer.attention.bn is not None:
            layer.attention.bn.running_mean.normal_()
            layer.attention.bn.running_var.uniform_(0.5, 2.0)
    layer.update_temperature(1.7)
    return layer


def _x(b=B):
    return torch.randn(b, CIN, H, H)


def _check(layer, training):
    layer.train(training)
    assert_matches_reference(layer, _x(), lambda x64, p: reference_odconv(x64, layer, p, training), tol=1e-5)


VARIANTS = {
    "no-spatial": dict(attentions=("channel", "filter", "kernel")),
    "no-channel": dict(attentions=("spatial", "filter", "kernel")),
    "no-filter": dict(attentions=("spatial", "channel", "kernel")),
    "kernel-only": dict(attentions=("kernel",)),
    "no-kernel-k1": dict(kernel_num=1, attentions=("spatial", "channel", "filter")),
    "none-k1": dict(kernel_num=1, attentions=()),
    "reduction": dict(reduction=0.5, min_channel=4),
    "k2": dict(kernel_num=2),
    "softmax": dict(spatial_act="softmax"),
    "layer-norm": dict(attention_norm="layer"),
    "no-norm": dict(attention_norm="none"),
    "combined": dict(kernel_num=2, attentions=("spatial", "kernel"), spatial_act="softmax", attention_norm="layer"),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_matches_the_float64_reference(variant, training):
    _check(_layer(**VARIANTS[variant]), training)


@pytest.mark.parametrize("off", ["spatial", "channel", "filter"])
def test_an_attention_left_out_is_one(off):
    # Same parameters as the full layer for everything they share: the ablated layer must compute the full
    # layer's per-sample formula with the attention `off` replaced by 1, and nothing else changed.
    full = _layer().eval()
    ablated = ODConv2d(CIN, COUT, 3, padding=1, attentions=[a for a in ("spatial", "channel", "filter", "kernel")
                                                            if a != off]).eval()
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and unexpected == [f"attention.{off}_fc.weight", f"attention.{off}_fc.bias"]
    ablated.update_temperature(1.7)
    x = _x()
    with torch.no_grad():
        att = full.attention(x)
        p = {n: t.detach() for n, t in full.state_dict().items()}
        expected = per_sample_conv(
            x, full, p, att.kernel,
            None if off == "channel" else att.channel,
            None if off == "filter" else att.filter,
            None if off == "spatial" else att.spatial,
        )
        torch.testing.assert_close(ablated(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(full(x), expected, rtol=1e-3, atol=1e-3)  # the attention did matter


def test_reduction_and_min_channel_set_the_hidden_width():
    assert ODConv2d(64, 64, 3).attention.fc.out_channels == 16  # max(int(64 * 0.0625), 16), released
    assert ODConv2d(64, 64, 3, reduction=0.25).attention.fc.out_channels == 16
    assert ODConv2d(64, 64, 3, reduction=0.5).attention.fc.out_channels == 32
    assert ODConv2d(64, 64, 3, min_channel=2).attention.fc.out_channels == 4
    layer = _layer(reduction=0.5, min_channel=4)
    assert {m.in_channels for m in layer.attention._heads()} == {8}


def test_kernel_num_sets_the_number_of_mixed_kernels():
    layer = _layer(kernel_num=3).eval()
    assert layer.weight.shape == (3, COUT, CIN, 3, 3) and layer.attention.kernel_fc.out_channels == 3
    kernel = layer.attention(_x()).kernel
    assert kernel.shape == (B, 3)
    torch.testing.assert_close(kernel.sum(1), torch.ones(B))
    assert _layer(kernel_num=1).attention.kernel_fc is None  # one kernel: nothing to mix, as released


def test_softmax_spatial_attention_sums_to_one_over_the_taps():
    sig, soft = _layer().eval(), _layer(spatial_act="softmax").eval()
    soft.load_state_dict(sig.state_dict())
    x = _x()
    a_sig, a_soft = sig.attention(x), soft.attention(x)
    torch.testing.assert_close(a_soft.spatial.sum((1, 2)), torch.ones(B))
    assert not torch.allclose(a_sig.spatial.sum((1, 2)), torch.ones(B))
    logits = torch.logit(a_sig.spatial).flatten(1)  # the same logits, through a softmax instead
    torch.testing.assert_close(a_soft.spatial.flatten(1), torch.softmax(logits, 1), rtol=1e-5, atol=1e-6)
    for name in ("channel", "filter", "kernel"):  # the other attentions are untouched
        torch.testing.assert_close(getattr(a_soft, name), getattr(a_sig, name))


def test_no_attention_norm_has_no_norm_module_and_is_batch_independent():
    layer = _layer(attention_norm="none")
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) for m in layer.modules())
    assert layer.attention.fc.bias is not None  # the squeeze fc gets the bias the norm no longer provides
    x = _x()
    torch.testing.assert_close(layer.train()(x)[:1], layer(x[:1]))
    torch.testing.assert_close(layer.train()(x), layer.eval()(x))


def test_layer_norm_is_batch_independent_and_trains_on_single_samples():
    layer = _layer(attention_norm="layer")
    assert isinstance(layer.attention.norm, nn.GroupNorm) and layer.attention.bn is None
    assert layer.attention.norm.num_groups == 1  # one group: normalised over each sample's hidden units
    x = _x()
    torch.testing.assert_close(layer.train()(x)[1:2], layer(x[1:2]))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.attention.fc.weight.detach().clone()
    layer(x[:1]).square().mean().backward()
    opt.step()
    assert not torch.equal(before, layer.attention.fc.weight)


def test_batch_norm_single_sample_training_batch_names_the_layer_and_the_fixes():
    model = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, CIN, 3, padding=1),
        stage=nn.Sequential(OrderedDict(conv=ODConv2d(CIN, COUT, 3, padding=1))),
    ))
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 8, 8))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("ODConv layer 'stage.conv':")
    for fix in ("attention_norm='layer'", "'none'", "model.eval()", "more than one sample"):
        assert fix in message
    alone = ODConv2d(CIN, COUT, 3, padding=1)
    alone_message = r"^ODConv2d\(16, 24, kernel_size=\(3, 3\).*\): a training-mode .*attention_norm='layer'"
    with pytest.raises(ValueError, match=alone_message):
        alone(torch.randn(1, CIN, 8, 8))
    assert model.eval()(torch.randn(1, 3, 8, 8)).shape == (1, COUT, 8, 8)  # eval mode: running statistics


def test_defaults_are_the_released_layer_and_load_released_keys():
    layer = ODConv2d(64, 128, 3, padding=1)
    released = {
        "weight": (4, 128, 64, 3, 3), "attention.fc.weight": (16, 64, 1, 1),
        "attention.bn.weight": (16,), "attention.bn.bias": (16,), "attention.bn.running_mean": (16,),
        "attention.bn.running_var": (16,), "attention.bn.num_batches_tracked": (),
        "attention.channel_fc.weight": (64, 16, 1, 1), "attention.channel_fc.bias": (64,),
        "attention.filter_fc.weight": (128, 16, 1, 1), "attention.filter_fc.bias": (128,),
        "attention.spatial_fc.weight": (9, 16, 1, 1), "attention.spatial_fc.bias": (9,),
        "attention.kernel_fc.weight": (4, 16, 1, 1), "attention.kernel_fc.bias": (4,),
    }
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == released  # no temperature: runtime state
    checkpoint = {k: torch.randn(s) if s else torch.tensor(7) for k, s in released.items()}
    checkpoint["attention.bn.running_var"] = checkpoint["attention.bn.running_var"].abs()
    layer.load_state_dict(checkpoint)  # strict
    torch.testing.assert_close(layer.attention.spatial_fc.bias, checkpoint["attention.spatial_fc.bias"])
    assert "attentions" not in repr(layer) and "spatial_act" not in repr(layer) and "attention_norm" not in repr(layer)
    r = repr(ODConv2d(8, 8, 3, kernel_num=1, attentions=["channel"], spatial_act="softmax", attention_norm="none"))
    assert "attentions=('channel',)" in r and "spatial_act='softmax'" in r and "attention_norm='none'" in r


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attentions="spatial"), "attentions must be a list of names"),
        (dict(attentions=["spatial", "temporal"]), r"Unknown attention\(s\) \['temporal'\]"),
        (dict(kernel_num=4, attentions=["spatial"]), "kernel_num=4 needs the kernel attention"),
        (dict(spatial_act="tanh"), "Invalid spatial_act 'tanh'"),
        (dict(attention_norm="instance"), "Invalid attention_norm 'instance'"),
    ],
)
def test_invalid_switches_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ODConv2d(8, 8, 3, **kwargs)
