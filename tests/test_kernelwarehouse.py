"""KernelWarehouse layers (1-D, 2-D, 3-D, linear) against the float64 per-sample reference, forward and every
gradient, at tau 1, 0.5 and 0; float32 within derived bounds; the tau = 1 identity; the manager's protocol."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odconv
from kw_reference import CONVS, Probe, conv_of, longest_kw_sum, reference_kw
from odconv import KWConv2d, KWConvNd, KWLinear, WarehouseManager, build_warehouses, explain
from odconv.dispatch import use_formulation
from odconv_reference import float32_error_bound, float64_params, rel_err

# name -> (layer type, layer args, a second layer of the same warehouse built first (or None), manager settings,
# input shape). The second layer makes gcds smaller than the channels (several cells per kernel tap) and puts
# the tested layer's own cells after another layer's (start cell > 0).
CASES = {
    "2d": ("conv2d", dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1),
           dict(in_channels=4, out_channels=8, kernel_size=3, padding=1), {}, (3, 8, 6, 5)),
    "2d-grouped-4x": ("conv2d", dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=2),
                      None, dict(cell_num_ratio=4), (3, 8, 4, 4)),
    "2d-half-nonlocal": ("conv2d", dict(in_channels=8, out_channels=8, kernel_size=(1, 3), padding=(0, 1)),
                         dict(in_channels=8, out_channels=8, kernel_size=1),
                         dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                              nonlocal_basis_ratio=0.0625), (4, 8, 3, 4)),
    "1d": ("conv1d", dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, bias=True),
           dict(in_channels=6, out_channels=4, kernel_size=1), dict(cell_num_ratio=2), (3, 6, 7)),
    "3d": ("conv3d", dict(in_channels=4, out_channels=8, kernel_size=3, stride=(1, 2, 2), padding=1),
           None, {}, (2, 4, 3, 4, 5)),
    "linear": ("linear", dict(in_channels=12, out_channels=10, bias=True), None, dict(norm="layer"), (3, 4, 12)),
    # Maps smaller than the kernel: only the taps that ever see data are assembled and convolved (the centre tap on
    # 1x1 maps, as in ResNet18's last stage at 32px; one tap of a dilated kernel; two of three dims in 3-D).
    "2d-1x1-map": ("conv2d", dict(in_channels=8, out_channels=16, kernel_size=3, padding=1), None, {}, (3, 8, 1, 1)),
    "2d-dilated-2x2-map": ("conv2d", dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2), None,
                           dict(cell_num_ratio=2), (3, 8, 2, 2)),
    "1d-length-1": ("conv1d", dict(in_channels=6, out_channels=8, kernel_size=5, padding=2, bias=True), None, {},
                    (3, 6, 1)),
    "3d-thin": ("conv3d", dict(in_channels=4, out_channels=8, kernel_size=3, padding=1), None, {}, (2, 4, 1, 3, 1)),
}
TAUS = (1.0, 0.5, 0.0)


def build(case: str, dtype=torch.float64, seed: int = 0) -> tuple[Probe, nn.Module]:
    """The case's layer in a Probe, after store() and allocate(); attention biases and BatchNorm statistics
    randomised so no term of the reference is trivially zero or one."""
    layer_type, args, other_args, settings, _ = CASES[case]
    torch.manual_seed(seed)
    manager = WarehouseManager(sharing_range=("layer",), **settings)
    layers = []
    if other_args is not None:
        layers.append(manager.reserve(**other_args, bias=False, warehouse_name="stage0_layer0", layer_type=layer_type,
                                      dtype=dtype))
    layer = manager.reserve(**dict(dict(bias=False), **args), warehouse_name="stage0_layer1", layer_type=layer_type,
                            dtype=dtype)
    layers.append(layer)
    build_warehouses(nn.ModuleList(layers), manager)
    with torch.no_grad():
        for name, p in conv_of(layer).attention.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
        norm = conv_of(layer).attention.norm1
        if isinstance(norm, nn.BatchNorm1d):
            norm.running_mean.normal_(0, 0.3)
            norm.running_var.uniform_(0.5, 2.0)
        if conv_of(layer).bias is not None:
            conv_of(layer).bias.normal_()
    return Probe(layer, manager).to(dtype), layer


def _grads(probe: nn.Module, x: torch.Tensor, grad_out=None):
    x = x.detach().requires_grad_()
    y = probe(x)
    if grad_out is None:
        grad_out = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    y.backward(grad_out)
    return x, y, grad_out


def _reference_grads(probe, layer, x, grad_out, training, tau):
    p = float64_params(probe)
    x64 = x.detach().double().requires_grad_()
    y = reference_kw(x64, layer, p, training, tau)
    y.backward(grad_out.double())
    return x64, y, p


def _bmm_computes(case: str) -> bool:
    """Whether the per-sample bmm (1-D and 2-D, groups 1) can run the case's layer."""
    layer_type, args = CASES[case][:2]
    return layer_type != "conv3d" and args.get("groups", 1) == 1


# Each case under each per-sample formulation that can compute it (the rule picks by output size).
FORMULATION_CASES = [(case, f) for case in CASES for f in ("grouped", "bmm") if f == "grouped" or _bmm_computes(case)]


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("case, formulation", FORMULATION_CASES)
def test_float64_matches_per_sample_reference(case, formulation, tau):
    probe, layer = build(case)
    odconv.set_temperature(probe, tau)
    training = case != "2d-grouped-4x"  # one case with the attention's BatchNorm in eval mode (running statistics)
    probe.train(training)
    x = torch.randn(CASES[case][4], dtype=torch.float64)
    with use_formulation(formulation):
        x, y, grad_out = _grads(probe, x)
    x64, y_ref, p = _reference_grads(probe, layer, x, grad_out, training, tau)
    assert y.shape == y_ref.shape
    tol = 1e-10
    assert rel_err(y, y_ref) < tol
    assert rel_err(x.grad, x64.grad) < tol
    names = [n for n, _ in probe.named_parameters()]
    assert any(n.startswith("warehouse_manager.weights.") for n in names) and any("fc2" in n for n in names)
    for name, prm in probe.named_parameters():
        assert prm.grad is not None, name
        if tau == 1.0 and ".attention." in name:  # the learned attention has weight 1 - tau = 0
            assert prm.grad.abs().max() == 0 and p[name].grad.abs().max() == 0, name
            continue
        assert p[name].grad.abs().max() > 0, f"{name}: the reference gradient is zero, the test would be weak"
        assert rel_err(prm.grad, p[name].grad) < tol, f"grad of {name}: {rel_err(prm.grad, p[name].grad)}"


@pytest.mark.parametrize("case", list(CASES))
def test_float32_within_derived_bound(case):
    tau = 0.5
    probe64, layer64 = build(case)
    probe = copy.deepcopy(probe64).float()
    for m in (probe, probe64):
        odconv.set_temperature(m, tau)
    x = torch.randn(CASES[case][4], dtype=torch.float64)
    x32, y, grad_out = _grads(probe, x.float())
    x64, y_ref, p = _reference_grads(probe64, layer64, x, grad_out, True, tau)
    bound = float32_error_bound(probe64, x, grad_out.double(),
                                lambda xx, pp: reference_kw(xx, layer64, pp, True, tau),
                                longest=longest_kw_sum(layer64, x, y_ref))
    errors = {"output": rel_err(y, y_ref), "input grad": rel_err(x32.grad, x64.grad)}
    errors.update({f"grad of {n}": rel_err(prm.grad, p[n].grad) for n, prm in probe.named_parameters()})
    for key, err in errors.items():
        assert err <= bound[key], f"{key}: float32 rel err {err:.3g} over the derived bound {bound[key]:.3g}"


def _static_kernel(layer: nn.Module, cells: torch.Tensor, ratio: float) -> torch.Tensor:
    """The layer's kernel as a plain partition of its own warehouse cells, by the released initial assignment:
    ratio >= 1, mixture j is cell start + j * ratio; ratio 1/k, mixture j takes the next cell when
    j % k == (j // k) % k and is zero otherwise. Mixtures run (tap, out-group, in-group)."""
    conv = conv_of(layer)
    c_out, c_in = cells.shape[1:3]
    groups_out, groups_in = conv.out_channels // c_out, conv.in_channels // conv.groups // c_in
    taps = math.prod(conv.kernel_size)
    start = conv.attention.start_cell
    kernel = cells.new_zeros(taps, groups_out, c_out, groups_in, c_in)
    cell = start
    for j in range(taps * groups_out * groups_in):
        t, rest = divmod(j, groups_out * groups_in)
        og, ig = divmod(rest, groups_in)
        if ratio >= 1:
            kernel[t, og, :, ig] = cells[start + j * int(ratio)].reshape(c_out, c_in)
        elif j % round(1 / ratio) == (j // round(1 / ratio)) % round(1 / ratio):
            kernel[t, og, :, ig] = cells[cell].reshape(c_out, c_in)
            cell += 1
    return kernel.permute(1, 2, 3, 4, 0).reshape(conv.out_channels, conv.in_channels // conv.groups,
                                                  *conv.kernel_size)


@pytest.mark.parametrize("case", list(CASES))
def test_tau_one_is_a_static_conv_of_its_own_cells(case):
    """At tau = 1 (the released start of training) the layer is exactly a static conv whose kernel is its own
    disjoint cells of the warehouse, whatever the attention's weights."""
    probe, layer = build(case)
    odconv.set_temperature(probe, 1.0)
    probe.train()
    conv = conv_of(layer)
    cells = probe.warehouse_manager.weights[conv.warehouse_id].detach()
    ratio = CASES[case][3].get("cell_num_ratio", 1)
    w = _static_kernel(layer, cells, ratio)
    x = torch.randn(CASES[case][4], dtype=torch.float64)
    if isinstance(layer, KWLinear):
        expected = F.linear(x, w.flatten(1), conv.bias)
    else:
        expected = CONVS[conv.dimension](x, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert (w != 0).any()
    torch.testing.assert_close(probe(x), expected, rtol=1e-12, atol=1e-12)


def test_initial_cells_have_the_static_conv_fan_out():
    """allocate() initialises each layer's cells with He (fan_out) over (cells * c_out, c_in): at 1x the std of a
    3x3 conv's kernel, sqrt(2 / (C_out * 9))."""
    torch.manual_seed(0)
    manager = WarehouseManager()
    net = nn.ModuleList([manager.reserve(64, 64, 3, padding=1, bias=False, warehouse_name="a")])
    build_warehouses(net, manager)
    std = float(manager.weights[0].detach().std())
    assert abs(std / math.sqrt(2 / (64 * 9)) - 1) < 0.02


def test_manager_protocol_and_errors():
    manager = WarehouseManager(sharing_range="layer_conv")  # the released JSONs' string form
    assert manager.fuse_name("stage2_layer13_conv0") == "stage2_layer_conv"
    a = manager.reserve(8, 8, 3, padding=1, bias=False, warehouse_name="stage0_layer0_conv0")
    b = manager.reserve(8, 16, 1, bias=False, warehouse_name="stage0_layer1_conv1")
    c = manager.reserve(16, 16, 3, padding=1, bias=False, warehouse_name="stage1_layer0_conv0")
    plain = manager.reserve(3, 8, 3, warehouse_name="stem", enabled=False)
    assert type(plain) is nn.Conv2d and manager.names == ["stage0_layer_conv", "stage1_layer_conv"]
    with pytest.raises(RuntimeError, match="no warehouse yet"):
        a(torch.randn(2, 8, 4, 4))
    net = nn.ModuleList([a, b, c])
    build_warehouses(net, manager)
    # gcd 8 in, 8 out: 9 + 2 mixtures in warehouse 0; 9 in warehouse 1 (16x16 cells)
    assert [tuple(w.shape) for w in manager.weights] == [(11, 8, 8, 1, 1), (9, 16, 16, 1, 1)]
    assert (a.attention.start_cell, b.attention.start_cell) == (0, 9)
    sd = net.state_dict()
    assert "warehouse_manager.weights.1" in sd and not any(k.endswith(".weight") and "attention" not in k
                                                           and "warehouse" not in k for k in sd)
    assert c(b(a(torch.randn(2, 8, 5, 5)))).shape == (2, 16, 5, 5)
    bad = WarehouseManager(cell_num_ratio=(1, 2, 3))
    bad.reserve(8, 8, 1, warehouse_name="x")
    with pytest.raises(ValueError, match="cell_num_ratio has 3 values but the network has 1 warehouses"):
        bad.store()


def test_deepcopy_keeps_the_shared_warehouse_inside_the_copy():
    """EMA copies the model: the copy's layers must read the copy's warehouse, not the original's."""
    probe, layer = build("2d")
    twin = copy.deepcopy(probe)
    assert twin.layer._manager[0] is twin.warehouse_manager
    with torch.no_grad():
        twin.warehouse_manager.weights[0].zero_()
    x = torch.randn(CASES["2d"][4], dtype=torch.float64)
    probe.eval(), twin.eval()
    assert twin(x).abs().max() == 0 and probe(x).abs().max() > 0


def test_explain_reports_the_per_sample_conv_and_forcing_is_checked():
    probe, layer = build("3d", dtype=torch.float32)
    x = torch.randn(CASES["3d"][4])
    rows = explain(probe, x)
    assert [(r.layer, r.formulation, r.reason) for r in rows] == [("layer", "grouped", "only")]
    s = rows[0].shape
    assert (s.depth, s.height, s.width, s.kernel_size, s.kernel_num) == (3, 4, 5, (3, 3, 3), 27)
    assert "3x4x5" in odconv.format_explain(rows)
    with use_formulation("grouped"):
        assert explain(probe, x)[0].reason == "forced"
    with use_formulation("bmm"), pytest.raises(ValueError, match="'bmm' cannot compute a 3x3x3 conv 4->8"):
        probe(x)


def test_the_rule_runs_small_outputs_as_a_batched_gemm_per_tap():
    from odconv.dispatch import PER_SAMPLE_BMM_RATIO

    probe, _ = build("2d", dtype=torch.float32)  # 16 outputs x 9 taps
    for hw, formulation in (((6, 5), "bmm"), ((12, 12), "grouped")):  # 3x3 and 6x6 outputs
        [row] = explain(probe, torch.randn(3, 8, *hw))
        assert (row.formulation, row.reason) == (formulation, "rule")
    assert 16 * 9 / 36 < PER_SAMPLE_BMM_RATIO <= 16 * 9 / 9
    probe, _ = build("2d-grouped-4x", dtype=torch.float32)  # groups 2: the conv over the batch only
    assert [(r.formulation, r.reason) for r in explain(probe, torch.randn(3, 8, 1, 1))] == [("grouped", "only")]
    with use_formulation("bmm"), pytest.raises(ValueError, match="formulations that can: \\['grouped'\\]"):
        probe(torch.randn(3, 8, 1, 1))


def test_factory_builds_an_unattached_kw_conv():
    layer = odconv.create_dynamic_conv("kw", 8, 16, 3, 1, 1)
    assert isinstance(layer, KWConv2d) and layer.attention is None and layer.padding == (1, 1)


def test_temperature_schedule_for_tau():
    """The released tau: max(0, 1 - it / (iters_per_epoch * temp_epoch)), it 1-based over all epochs."""
    assert odconv.temperature_schedule(1, 10, 1.0, 20, t_end=0.0) == pytest.approx(1 - 1 / 200)
    assert odconv.temperature_schedule(100, 10, 1.0, 20, t_end=0.0) == pytest.approx(0.5)
    assert odconv.temperature_schedule(250, 10, 1.0, 20, t_end=0.0) == 0.0
    probe, _ = build("2d")
    assert odconv.final_temperature(probe) == 0.0 and odconv.set_temperature(probe, 0.25) == 1
    assert float(probe.layer.attention.tau) == 0.25


@pytest.mark.parametrize("case", ["2d", "linear"])
def test_bf16_autocast_follows_float32(case):
    """Under CPU bf16 autocast the layer runs (cell mixing and conv in bf16) and stays within bf16 rounding of the
    float32 result: unit roundoff 2^-8 times sqrt(longest sum), with a safety factor of 4."""
    probe64, layer64 = build(case)
    probe = copy.deepcopy(probe64).float().train()
    odconv.set_temperature(probe, 0.5)
    x = torch.randn(CASES[case][4])
    y32 = probe(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = probe(x)
    y16.float().sum().backward()
    assert y16.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in probe.parameters())
    bound = 4 * 2.0 ** -8 * longest_kw_sum(layer64, x, y32) ** 0.5
    assert rel_err(y16, y32) < bound


@pytest.mark.parametrize("case, taps", [("2d-1x1-map", (1, 1)), ("2d-dilated-2x2-map", (1, 1)), ("1d-length-1", (1,)),
                                        ("3d-thin", (1, 3, 1)), ("2d", (3, 3)), ("3d", (3, 3, 3))])
def test_only_the_taps_that_see_data_are_assembled(case, taps, monkeypatch):
    """The float64 test above covers these cases' outputs and gradients; here, that the kernel built really is cut."""
    probe, layer = build(case)
    built = []
    mixed_cells = KWConvNd._mixed_cells

    def recorded(self, *args):
        mixed, kernel_taps = mixed_cells(self, *args)
        built.append(kernel_taps)
        return mixed, kernel_taps

    monkeypatch.setattr(KWConvNd, "_mixed_cells", recorded)
    for formulation in ("grouped", "bmm") if _bmm_computes(case) else ("grouped",):
        built.clear()
        with use_formulation(formulation):
            probe(torch.randn(CASES[case][4], dtype=torch.float64))
        assert built == [taps], formulation


def test_data_tap_box():
    from odconv.formulations.grouped import data_tap_box

    assert data_tap_box((1, 1), (3, 3), (1, 1), (1, 1), (1, 1)) == ((slice(1, 2), slice(1, 2)), (0, 0))
    assert data_tap_box((1, 1), (7, 7), (2, 2), (3, 3), (1, 1)) == ((slice(3, 4), slice(3, 4)), (0, 0))
    assert data_tap_box((2, 2), (3, 3), (1, 1), (2, 2), (2, 2)) == ((slice(1, 2), slice(1, 2)), (0, 0))
    assert data_tap_box((1, 5), (3, 3), (1, 1), (1, 1), (1, 1)) == ((slice(1, 2), slice(0, 3)), (0, 1))
    assert data_tap_box((2, 2), (3, 3), (1, 1), (1, 1), (1, 1)) is None  # every tap sees data somewhere
    assert data_tap_box((2, 2), (3, 3), (2, 2), (1, 1), (1, 1)) is None  # taps 1-2 only: asymmetric padding
    assert data_tap_box((1, 1), (3, 3), (1, 1), (0, 0), (1, 1)) is None  # no output at all
    assert data_tap_box((1, 1), (3, 3), (1, 1), "same", (1, 1)) is None  # nn.Conv2d's string padding: no cut
