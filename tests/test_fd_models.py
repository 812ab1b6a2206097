"""The zoo's FDConv ResNets (models/fd.py): the static ResNet converted by `odconv.convert_to_fdconv`, so with the
exact-copy initialisation a freshly built fd_resnet18 computes the static_resnet18 built from the same seed."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import models  # noqa: F401  (registers the zoo)
from odconv import FDConv2d
from odconv_reference import rel_err


@pytest.mark.slow
def test_fd_resnet18_is_static_resnet18_with_every_block_conv_converted_and_computes_it_with_the_exact_init():
    torch.manual_seed(0)
    static = timm.create_model("static_resnet18", num_classes=10, dtype=torch.float64).eval()
    torch.manual_seed(0)
    fd = timm.create_model("fd_resnet18", num_classes=10, gate_init="exact", dtype=torch.float64).eval()
    dynamic = {n for n, m in fd.named_modules() if isinstance(m, FDConv2d) and m.is_dynamic}
    # FDConv's gate (min(C_in, C_out) > 16, kernel 1 or 3) passes all 16 block convs (64-512 channels); the 7x7 stem
    # and the three strided 1x1 shortcuts stay static, as in the released ResNet.
    assert dynamic == {f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)}
    assert all(type(m) is nn.Conv2d for n, m in fd.named_modules() if n == "conv1" or "downsample" in n
               and isinstance(m, nn.Conv2d))
    assert all(m.kernel_num == 64 for n, m in fd.named_modules() if n in dynamic)  # the released configs' value
    assert fd.pretrained_cfg["architecture"] == "fd_resnet18"
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fd(x), static(x)) < 1e-10  # float64: the same function up to rounding far below this


def test_fd_resnet18_refuses_pretrained_weights():
    with pytest.raises(ValueError, match="no weights can be downloaded here"):
        timm.create_model("fd_resnet18", pretrained=True)
