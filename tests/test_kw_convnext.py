"""KernelWarehouse ConvNeXt-T (released 1x) and its static twin: the released static layout and count, the released
warehouses and LayerNorm attention, the one-line error for another setting, tau = 1 as the static network whose
kernels are the layers' own cells, EMA copies, and one forward of the full network at 32 px.
(The KW row's count and released layout, bare and in the training format, are tests/test_kw_models.py's, which
covers every released row.)"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.utils import ModelEmaV3
from torch import nn

import models
import odconv
from kw_released_layout import convnext_static_layout
from models import load_state_dict_checked
from models.checkpoint import CheckpointMismatchError
from models.complexity import count_params
from models.published import KW_ROWS

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))  # the same definition, small enough for float64 checks


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_static_twin_is_the_released_convnext():
    """static_convnext_tiny has the released models/convnext.py state dict (pointwise layers as nn.Linear, gamma
    (C,)) and its 28.59M parameters, and loads that layout strictly."""
    model = _meta("static_convnext_tiny")
    layout = convnext_static_layout(kw=False)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    n = count_params(model)
    assert n == sum(torch.Size(s).numel() for s in layout.values()) == 28_589_128
    assert round(n / 1e6, 2) == KW_ROWS[("convnext_tiny", 0)].params
    released = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    assert load_state_dict_checked(model, released) == ([], [])


def test_static_twin_state_dict_round_trips():
    torch.manual_seed(0)
    a = timm.create_model("static_convnext_tiny", num_classes=10, **SMALL).eval()
    b = timm.create_model("static_convnext_tiny", num_classes=10, **SMALL).eval()
    assert a.state_dict()["stages.0.0.pwconv1.weight"].shape == (32, 8)
    assert load_state_dict_checked(b, a.state_dict()) == ([], [])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_warehouses_and_attention_as_released():
    model = _meta("kw_convnext_tiny")
    manager = model.warehouse_manager
    # kw_convnext.py's names fused with sharing_range ("layer", "pwconv"), in order of first reserve()
    assert manager.names == ["stagestem_conv0", "stage0_layer_conv0", "stage1_layer_conv0", "stage2_layer_conv0",
                             *[f"stage{s}_layer_{kind}" for s in range(4) for kind in ("dwconv0", "pwconv")]]
    kw = [m for m in model.modules() if isinstance(m, odconv.KWConv2d)]
    assert len(kw) == 4 + 18 * 3 and not any(isinstance(m, nn.Conv2d) for m in model.modules())
    for layer in kw:  # bias on every conv; LayerNorm trunk with fc1 bias (released norm_layer=nn.LayerNorm)
        assert layer.bias is not None and isinstance(layer.attention.norm1, nn.LayerNorm)
        assert layer.attention.fc1.bias is not None
    assert tuple(model.stages[3][2].gamma.shape) == (1, 768, 1, 1)
    assert model.downsample_layers[0][0].warehouse_id == 0 and model.stages[2][8].pwconv2.warehouse_id == 9


def test_another_setting_fails_in_one_line_naming_the_first_warehouse():
    one, four = _meta("kw_convnext_tiny"), _meta("kw_convnext_tiny", kw_ratio=4)
    assert four.warehouse_manager.weights[0].shape[0] == 4 * one.warehouse_manager.weights[0].shape[0]
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_checked(one, four.state_dict())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.split(": ", 1)[1].startswith("KernelWarehouse warehouse 0 (warehouse_manager.weights.0) holds cells "
                                            "(64, 96, 3, 1, 1) in the checkpoint but (16, 96, 3, 1, 1)")
    with pytest.raises(ValueError, match=r"^kw_convnext_tiny has no kw_ratio 0.5 \(released: \[1\]"):
        models.kw_convnext_tiny(kw_ratio=0.5)


def _copy_into_static(kw: nn.Module, static: nn.Module) -> None:
    """The static network that the KW network is at tau = 1: each KW conv's kernel assembled from the initial
    assignment beta (its own cells of the warehouse), every other parameter copied by name."""
    with torch.no_grad():
        for name, layer in kw.named_modules():
            if isinstance(layer, odconv.KWConvNd):
                att = layer.attention
                beta = att.assignment.view(att.num_mixtures, att.per_mixture)[None, :, :-1]
                conv = static.get_submodule(name)
                conv.weight.copy_(layer.assemble(beta, layer.warehouse())[0])
                conv.bias.copy_(layer.bias)
        static_params = dict(static.named_parameters())
        for k, v in kw.named_parameters():
            if k in static_params and static_params[k].shape == v.shape and "warehouse" not in k:
                static_params[k].copy_(v)


def test_tau_one_is_the_static_convnext_of_its_own_cells():
    torch.manual_seed(0)
    kw = timm.create_model("kw_convnext_tiny", num_classes=10, dtype=torch.float64, **SMALL).eval()
    static = timm.create_model("static_convnext_tiny", num_classes=10, dtype=torch.float64, **SMALL).eval()
    with torch.no_grad():  # non-trivial norms, layer scale and biases, so that a misplaced one shows
        for k, p in kw.named_parameters():
            if "warehouse" not in k and "attention" not in k:
                p.copy_(torch.randn_like(p))
    _copy_into_static(kw, static)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    odconv.set_temperature(kw, 1.0)
    with torch.no_grad():
        want, got = static(x), kw(x)
        # float64: the KW path only sums in another order (grouped per-sample conv); 1e-9 is far above that
        # (~1e-14 relative) and far below any structural error (order 1).
        assert float((got - want).abs().max() / want.abs().max()) < 1e-9
        odconv.set_temperature(kw, 0.0)
        assert float((kw(x) - want).abs().max() / want.abs().max()) > 1e-3  # the attention takes over at tau = 0


def test_trains_a_step_and_the_ema_copy_owns_its_warehouses():
    torch.manual_seed(0)
    model = timm.create_model("kw_convnext_tiny", num_classes=10, drop_path_rate=0.3, **SMALL)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    odconv.set_temperature(model, 0.0)
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(w.grad.abs().sum() > 0 for w in model.warehouse_manager.weights)
    assert model.stages[0][0].pwconv1.attention.fc2.weight.grad.abs().sum() > 0
    ema = ModelEmaV3(model, decay=0.9999)
    copied = ema.module
    assert copied.stages[1][0].dwconv.warehouse() is copied.warehouse_manager.weights[6]
    with torch.no_grad():
        model.warehouse_manager.weights[6].add_(1.0)
    ema.update(model)
    assert not torch.equal(copied.warehouse_manager.weights[6], model.warehouse_manager.weights[6])
    assert copy.deepcopy(model).stages[1][0].dwconv.warehouse() is not model.warehouse_manager.weights[6]


@pytest.mark.slow  # the per-sample kernel assembly mixes ~1.2 G multiply-adds per sample, on CPU
def test_full_convnext_tiny_forward_at_32px():
    """The full network runs (gradients: the small network above, same definition)."""
    torch.manual_seed(0)
    model = timm.create_model("kw_convnext_tiny", num_classes=10).eval()
    assert count_params(model) == 39_370_674 - 990 * 768 - 990  # the 1000-class head replaced by a 10-class one
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))  # no batch statistics anywhere (LayerNorm): one sample is a real run
    assert out.shape == (1, 10) and torch.isfinite(out).all()
