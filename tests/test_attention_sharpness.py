"""scripts/attention_sharpness.py: the per-layer sharpness of the kernel attention that docs/training.md quotes."""
from __future__ import annotations

import importlib.util

import timm
import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("attention_sharpness", REPO / "scripts" / "attention_sharpness.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_a_high_temperature_makes_the_attention_near_uniform_and_t1_sharper():
    torch.manual_seed(0)
    model = timm.create_model("dyconv_resnet18", kernel_num=4, num_classes=10).train()
    x = torch.randn(8, 3, 32, 32)
    hot, flat = script.sharpness(model, x, 1.0), script.sharpness(model, x, 30.0)
    assert len(hot) == len(flat) == 16  # every 3x3 conv of the residual blocks
    assert all(0.25 <= v <= 1.0 for v in hot.values())
    # softmax(z / T) over 4 kernels: at T = 30 every weight is within a factor e^(spread / 30) of 1/4.
    assert all(v < 0.5 for v in flat.values())
    assert all(hot[k] >= flat[k] for k in hot)  # dividing the logits by a larger T never sharpens the largest


def test_a_model_without_kernel_attention_is_an_error(capsys):
    assert script.main(["--model", "od_resnet18", "--kernel-num", "1", "--batch", "2"]) == 2
    assert "has no kernel attention" in capsys.readouterr().err
