"""Deployment of eval-mode zoo models: `torch.export` and ONNX (checked with onnxruntime) match eager PyTorch."""
from __future__ import annotations

import copy
import functools

import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

import models  # noqa: F401  (registers the zoo)
from odconv import DynamicConv2d

# (model, layer kwargs): the four ODConv models, and one CondConv and one DyConv network.
EXPORTED = [
    ("od_resnet18", dict(kernel_num=1)),
    ("od_resnet18", dict(kernel_num=4)),
    ("od_mobilenetv2_100", dict(kernel_num=1)),
    ("od_mobilenetv2_100", dict(kernel_num=4)),
    ("condconv_resnet18", dict(num_experts=8)),
    ("dyconv_mobilenetv2_050", dict(kernel_num=4)),
]
IDS = [f"{n}-{next(iter(k.values()))}x" for n, k in EXPORTED]


def _calibrated(name: str, layer_kwargs: dict) -> nn.Module:
    """An eval-mode model whose network BatchNorms hold the statistics of one pass over noise, so that its outputs
    are of order 1.

    At initialisation the attentions scale every ODConv output by about 1/8 (three sigmoids at 0.5), so an
    untouched od_mobilenetv2_100 outputs values near 1e-30. The BatchNorms inside the attention branches stay in
    eval mode with their initial statistics during that pass: in training mode they would normalise pooled noise
    (nearly the same vector for every image) by its tiny batch variance, and the network calibrated that way
    would behave differently in eval mode.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **layer_kwargs).train()
    inside = {id(m) for d in model.modules() if isinstance(d, DynamicConv2d) for m in d.modules()}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            if id(m) in inside:
                m.eval()
            else:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: one pass gives the batch's statistics
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    return model.eval()


@functools.lru_cache(maxsize=None)
def _exported(name: str, layer_items: tuple):
    model = _calibrated(name, dict(layer_items))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    return model, x, program


def _assert_within_float32_rounding(model: nn.Module, x: torch.Tensor, actual: torch.Tensor) -> None:
    """`actual` is about as close to the float64 result as eager float32 is: it differs from eager only by rounding.

    A deep random network amplifies rounding (eager od_mobilenetv2_100 is ~1% off float64 here), so a fixed
    tolerance would be either meaningless or flaky; the float64 run says what rounding does. Root-mean-square
    errors, within 10x of eager's: two float32 evaluation orders land a few times apart, a wrong computation is
    off by the size of the output itself (over 1000x).
    """
    with torch.no_grad():
        expected = model(x).double()
        reference = copy.deepcopy(model).double()(x.double())
    scale = float(reference.abs().max())
    assert scale > 0.1, "the reference output is too small for the comparison to mean anything"
    eager_error = float((expected - reference).pow(2).mean().sqrt())
    error = float((actual.double() - reference).pow(2).mean().sqrt())
    assert error <= 10 * eager_error + 1e-6 * scale, (error, eager_error, scale)


@pytest.mark.slow
@pytest.mark.parametrize("name, layer_kwargs", EXPORTED, ids=IDS)
def test_torch_export_matches_eager(name, layer_kwargs):
    model, x, program = _exported(name, tuple(layer_kwargs.items()))
    with torch.no_grad():
        _assert_within_float32_rounding(model, x, program.module()(x))
        # The program is a function of its input, not a recording of this one.
        x2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        _assert_within_float32_rounding(model, x2, program.module()(x2))


@pytest.mark.slow
@pytest.mark.parametrize("name, layer_kwargs", [EXPORTED[1], EXPORTED[2]], ids=[IDS[1], IDS[2]])
def test_onnx_export_runs_in_onnxruntime(name, layer_kwargs, tmp_path):
    model, x, program = _exported(name, tuple(layer_kwargs.items()))
    # From the exported program (not the module again), without the ONNX graph optimiser: the same graph, in
    # a tenth of the time on this machine.
    onnx_program = torch.onnx.export(program, (x,), dynamo=True, optimize=False, verbose=False)
    path = tmp_path / f"{name}.onnx"
    onnx_program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    _assert_within_float32_rounding(model, x, torch.from_numpy(out))


@pytest.mark.slow
def test_torch_export_with_a_dynamic_batch_dimension():
    model = _calibrated("od_resnet18", dict(kernel_num=4))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
        for b in (1, 3):  # sizes other than the traced one
            xb = torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(b))
            _assert_within_float32_rounding(model, xb, program.module()(xb))
