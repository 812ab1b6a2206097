"""timm's own model checks (tests/test_models.py of timm 1.0.x), reproduced for a few zoo models.

What a timm user relies on: the default cfg describes the model (pool size, classifier and first conv names,
`num_features`/`head_hidden_size`), the head can be reset or removed, `device=` reaches the constructor, FX
feature extraction traces the model (dynamic convs are FX leaves, registered by models/layers.py) and gives the
same outputs, `features_only` gives the stages it announces, and the static twins compile with TorchScript (the
dynamic convs do not: their custom autograd functions are outside TorchScript; `torch.export` covers deployment,
tests/test_export.py).
"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import models  # noqa: F401  (registers the zoo)
from odconv import DYNAMIC_CONVS

DYNAMIC = ["od_resnet18", "od_mobilenetv2_050", "condconv_resnet18", "dyconv_mobilenetv2_050"]
STATIC = ["static_resnet18", "static_mobilenetv2_050"]
FX_SIZE = 64  # timm uses 128; the checks do not depend on it


def test_dynamic_convs_are_fx_leaves():
    assert set(DYNAMIC_CONVS.values()) <= set(get_notrace_modules())


@pytest.mark.parametrize("name", DYNAMIC + STATIC)
def test_default_cfg_describes_the_model(name):
    # As timm's test_model_default_cfgs: timm passes device= to the constructor.
    model = timm.create_model(name, pretrained=False, device="cpu").eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    # The named layers are the classifier and the first conv, of the sizes the cfg and the attributes announce.
    classifier, first_conv = state_dict[cfg["classifier"] + ".weight"], state_dict[cfg["first_conv"] + ".weight"]
    assert model.num_classes == cfg["num_classes"] == 1000 == classifier.shape[0]
    assert model.head_hidden_size == classifier.shape[1] == (512 if "resnet" in name else 1280)
    assert first_conv.shape[1] == cfg["input_size"][0] == model.in_chans == 3
    gray = timm.create_model(name, pretrained=False, in_chans=1, num_classes=10).eval()  # timm's in_chans contract
    assert gray.in_chans == 1 and gray(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's _create_fx_model: trace with timm's leaf modules, return the node(s) feeding the output."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", DYNAMIC + STATIC)
def test_fx_forward_equals_eager_and_backward_reaches_every_parameter(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, FX_SIZE, FX_SIZE)
    with torch.inference_mode():
        expected = model(x)
        traced = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(traced, expected)

    model = timm.create_model(name, num_classes=42).train()
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(torch.randn(2, 3, FX_SIZE, FX_SIZE)).values()))
    out.mean().backward()
    for n, p in fx.named_parameters():
        assert p.grad is not None, f"No gradient for {n}"
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", DYNAMIC + STATIC + ["dyconv_resnet50"])  # and a bottleneck ResNet
def test_features_only_gives_what_feature_info_announces(name):
    model = timm.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert reductions == [4, 8, 16, 32]  # the four stages a detection neck takes
    assert [o.shape[1:] for o in outs] == [(c, 96 // r, 96 // r) for c, r in zip(channels, reductions)]
    assert not any(torch.isnan(o).any() for o in outs)


@pytest.mark.parametrize("name", STATIC)
def test_static_twins_compile_with_torchscript(name):
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        # timm's test_model_forward_fx_torchscript: FX-traced, then scripted.
        fx_scripted = torch.jit.script(_fx_model(model))
        torch.testing.assert_close(torch.cat(tuple(fx_scripted(x).values())), model(x))
