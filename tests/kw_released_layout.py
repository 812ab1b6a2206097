"""The state-dict layout (key -> shape) of the released KernelWarehouse ImageNet models, re-stated from the released
code (OSVAI/KernelWarehouse models/kw_resnet.py, kw_mobilenetv2.py, kw1d2x_mobilenetv2.py, kw_convnext.py,
convnext.py; modules/kernel_warehouse.py `Warehouse_Manager.reserve/store`, `KWconvNd.init_attention`,
`Attention.__init__`) without using models/kw.py: the constructors' `reserve()` calls in their order, the fused
warehouse names, the gcd cell shapes and the attention's parameter shapes. The static parts of ResNet and
MobileNetV2 (stem, BatchNorms, classifier) are torchvision's names, taken from the zoo's static twin; ConvNeXt's are
written out here from the released constructors (no twin of ours involved)."""
from __future__ import annotations

import math

from timm.layers import make_divisible

# One reserve() call: (module name, C_in, C_out, kernel, groups, raw warehouse name or None when enabled=False,
# bias, layer type).
Reserve = tuple[str, int, int, int, int, "str | None", bool, str]

SETTINGS = {  # config JSONs (and the 1/2x MobileNetV2 constructor's hard-coded tuples)
    ("resnet", 0.25): dict(red=0.0625, num=0.25, inp=0.5, out=0.5, share=("layer", "conv")),
    ("resnet", 0.5): dict(red=0.0625, num=0.5, inp=0.5, out=0.5, share=("layer", "conv")),
    ("resnet", 1): dict(red=0.0625, num=1, inp=1, out=1, share=("layer", "conv")),
    ("resnet", 2): dict(red=0.0625, num=2, inp=1, out=1, share=("layer", "conv")),
    ("resnet", 4): dict(red=0.0625, num=4, inp=1, out=1, share=("layer", "conv")),
    ("mobilenetv2", 1): dict(red=0.0625, num=1, inp=1, out=1, share=("layer", "pwconv")),
    ("mobilenetv2", 4): dict(red=0.0625, num=4, inp=1, out=1, share=("layer",)),
    ("mobilenetv2", 0.5): dict(red=0.03125, num=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5),
                               inp=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025), out=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1),
                               share=tuple("layer")),
    # configs/convnext/kw1x_convnext_tiny.json passes sharing_range as the string "layer_pwconv", which the released
    # fuse_warehouse_name iterates character by character: kept as given, it groups as ("layer", "pwconv") would.
    ("convnext", 1): dict(red=0.0625, num=1, inp=1, out=1, share="layer_pwconv", norm="layer"),
}
CONVNEXT_TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))


def resnet_reserves(depth: int) -> list[Reserve]:
    bottleneck = depth == 50
    blocks = (3, 4, 6, 3) if depth == 50 else (2, 2, 2, 2)
    expansion = 4 if bottleneck else 1
    calls: list[Reserve] = []
    inplanes, layer_idx = 64, 0
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        stride = 1 if stage == 0 else 2
        if stride != 1 or inplanes != planes * expansion:  # _make_layer: downsample reserved first
            calls.append((f"layer{stage + 1}.0.downsample.0", inplanes, planes * expansion, 1, 1,
                          f"stage{stage - 1}_layer{layer_idx + 1}_conv0" if stride != 1 else None, False, "conv2d"))
        for b in range(n):
            handover = b == 0
            cin = inplanes if b == 0 else planes * expansion
            li = layer_idx if handover else b
            p = f"layer{stage + 1}.{b}."
            if bottleneck:
                s1 = stage - 1 if handover else stage
                calls.append((p + "conv1", cin, planes, 1, 1, f"stage{s1}_layer{li}_conv0" if s1 >= 0 else None,
                              False, "conv2d"))
                li2 = 0 if handover else li
                calls.append((p + "conv2", planes, planes, 3, 1, f"stage{stage}_layer{li2}_conv1", False, "conv2d"))
                calls.append((p + "conv3", planes, planes * 4, 1, 1, f"stage{stage}_layer{li2}_conv2", False,
                              "conv2d"))
            else:
                s1 = max(stage - 1 if handover else stage, 0)
                calls.append((p + "conv1", cin, planes, 3, 1, f"stage{s1}_layer{li}_conv0", False, "conv2d"))
                calls.append((p + "conv2", planes, planes, 3, 1, f"stage{stage}_layer{0 if handover else li}_conv1",
                              False, "conv2d"))
        inplanes, layer_idx = planes * expansion, 1
    return calls


def mobilenetv2_reserves(width: float, half: bool, num_classes: int = 1000) -> list[Reserve]:
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]
    kw_stage = [1, 2, 3, 4, 5, 6, 6]
    pw_enabled = [False, False, False, False, False, True, True]
    inp = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    calls: list[Reserve] = [("features.0.0", 3, inp, 3, 1, "stage0_conv0", False, "conv2d")]
    f, layer_idx = 1, 0
    for idx, (t, c, n, s) in enumerate(setting):
        oup = make_divisible(c * width)
        for i in range(n):
            handover = i == 0 and idx > 0 and kw_stage[idx] != kw_stage[idx - 1]
            stage = kw_stage[idx] - 1 if handover else kw_stage[idx]
            pw_on = pw_enabled[stage - 1] if half else True
            hidden = int(round(inp * t))
            j = 0
            if t != 1:
                calls.append((f"features.{f}.conv.0.0", inp, hidden, 1, 1,
                              f"stage{stage}_layer{layer_idx}_pwconv0" if pw_on else None, False, "conv2d"))
                j = 1
            calls.append((f"features.{f}.conv.{j}.0", hidden, hidden, 3, hidden,
                          f"stage{stage}_layer{layer_idx}_dwconv0", False, "conv2d"))
            calls.append((f"features.{f}.conv.{j + 1}", hidden, oup, 1, 1,
                          f"stage{stage}_layer{layer_idx}_pwconv1" if pw_on else None, False, "conv2d"))
            inp, f, layer_idx = oup, f + 1, layer_idx + 1
            if handover:
                layer_idx = 0
    calls.append((f"features.{f}.0", inp, last, 1, 1, f"stage{kw_stage[-1]}_layer{layer_idx}_pwconv1", False,
                  "conv2d"))
    if half:
        calls.append(("classifier.1", last, num_classes, 1, 1, "classifier", True, "linear"))
    return calls


def convnext_reserves(depths=CONVNEXT_TINY["depths"], dims=CONVNEXT_TINY["dims"]) -> list[Reserve]:
    """kw_convnext.py: the stem, the three downsampling convs, then per block dwconv, pwconv1, pwconv2; every
    reserve() keeps its default bias=True."""
    calls: list[Reserve] = [("downsample_layers.0.0", 3, dims[0], 4, 1, "stagestem_conv0", True, "conv2d")]
    for i in range(3):
        calls.append((f"downsample_layers.{i + 1}.1", dims[i], dims[i + 1], 2, 1, f"stage{i}_layerds_conv0", True,
                      "conv2d"))
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p, w = f"stages.{i}.{j}.", f"stage{i}_layer{j}_"
            calls += [(p + "dwconv", dim, dim, 7, dim, w + "dwconv0", True, "conv2d"),
                      (p + "pwconv1", dim, 4 * dim, 1, 1, w + "pwconv1", True, "conv2d"),
                      (p + "pwconv2", 4 * dim, dim, 1, 1, w + "pwconv2", True, "conv2d")]
    return calls


def convnext_static_layout(kw: bool, num_classes: int = 1000, depths=CONVNEXT_TINY["depths"],
                           dims=CONVNEXT_TINY["dims"]) -> dict[str, tuple[int, ...]]:
    """The released ConvNeXt's non-conv parameters (LayerNorms, layer scale, head), and with `kw=False` its convs
    as the static models/convnext.py has them (pointwise layers `nn.Linear`, gamma (C,); kw_convnext.py: gamma
    (1, C, 1, 1))."""
    out: dict[str, tuple[int, ...]] = {}
    out["downsample_layers.0.0.weight"], out["downsample_layers.0.0.bias"] = (dims[0], 3, 4, 4), (dims[0],)
    out["downsample_layers.0.1.weight"] = out["downsample_layers.0.1.bias"] = (dims[0],)
    for i in range(3):
        p = f"downsample_layers.{i + 1}."
        out[p + "0.weight"] = out[p + "0.bias"] = (dims[i],)
        out[p + "1.weight"], out[p + "1.bias"] = (dims[i + 1], dims[i], 2, 2), (dims[i + 1],)
    for i, (depth, d) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            out[p + "dwconv.weight"], out[p + "dwconv.bias"] = (d, 1, 7, 7), (d,)
            out[p + "norm.weight"] = out[p + "norm.bias"] = (d,)
            out[p + "pwconv1.weight"], out[p + "pwconv1.bias"] = (4 * d, d), (4 * d,)
            out[p + "pwconv2.weight"], out[p + "pwconv2.bias"] = (d, 4 * d), (d,)
            out[p + "gamma"] = (1, d, 1, 1) if kw else (d,)
    out["norm.weight"] = out["norm.bias"] = (dims[-1],)
    out["head.weight"], out["head.bias"] = (num_classes, dims[-1]), (num_classes,)
    return out


def _fuse(name: str, share) -> str:
    parts = []
    for part in name.split("_"):
        for prefix in share:
            if part.startswith(prefix):
                part = prefix
        parts.append(part)
    return "_".join(parts)


def _per(value, k: int) -> float:
    return value[k] if isinstance(value, tuple) else value


def kw_layout(calls: list[Reserve], settings: dict, nonlocal_basis: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the KW parts: `warehouse_manager.weights.{k}` and each KW layer's attention (and the
    static convs' weights, for layers reserved with enabled=False). The attention's trunk: fc1 without bias and
    BatchNorm1d, or (norm "layer", ConvNeXt) fc1 with bias and LayerNorm."""
    layer_norm = settings.get("norm") == "layer"
    out: dict[str, tuple[int, ...]] = {}
    warehouses: dict[str, list[Reserve]] = {}
    for call in calls:
        if call[5] is None:
            out[call[0] + ".weight"] = (call[2], call[1] // call[4], call[3], call[3])
        else:
            warehouses.setdefault(_fuse(call[5], settings["share"]), []).append(call)
    cells = {}
    for k, (wname, members) in enumerate(warehouses.items()):
        c_in = max(int(math.gcd(*(c[1] // c[4] for c in members)) * _per(settings["inp"], k)), 1)
        c_out = max(int(math.gcd(*(c[2] for c in members)) * _per(settings["out"], k)), 1)
        dims = 1 if members[0][7] == "linear" else 2
        n = max(int(sum(c[2] // c_out * (c[1] // c[4]) // c_in * c[3] ** dims for c in members)
                    * _per(settings["num"], k)), 1)
        out[f"warehouse_manager.weights.{k}"] = (n, c_out, c_in, *([1] * dims))
        cells[wname] = (k, n, c_out, c_in, dims)
    for name, cin, cout, ks, groups, wname, bias, kind in calls:
        if wname is None:
            continue
        k, n, c_out, c_in, dims = cells[_fuse(wname, settings["share"])]
        p = name + (".conv." if kind == "linear" else ".") + "attention."
        h = max(int(cin * _per(settings["red"], k)), 16)
        m = cout // c_out * (cin // groups // c_in) * ks ** dims
        out[p + "fc1.weight"] = (h, cin)
        if layer_norm:
            out[p + "fc1.bias"] = out[p + "norm1.weight"] = out[p + "norm1.bias"] = (h,)
        else:
            for s in ("weight", "bias", "running_mean", "running_var"):
                out[p + "norm1." + s] = (h,)
            out[p + "norm1.num_batches_tracked"] = ()
        if nonlocal_basis < 1:
            local = int(_per(settings["num"], k) * m)
            basis = max(int((n - local) * nonlocal_basis), 16)
            out[p + "fc2.weight"] = ((local + basis + 1) * m, h)
            out[p + "fc3.weight"] = (n - local, basis)
            out[p + "basis_bias"] = (m * (n + 1),)
        else:
            out[p + "fc2.weight"] = (m * (n + 1), h)
            out[p + "fc2.bias"] = (m * (n + 1),)
        if bias:
            out[name + (".conv.bias" if kind == "linear" else ".bias")] = (cout,)
    return out


def released_layout(arch: str, kw_ratio: float, static_state: dict) -> dict[str, tuple[int, ...]]:
    """The released model's state dict (key -> shape) for `arch` at `kw_ratio`; `static_state` is the static
    twin's state dict (its stem, BatchNorms and classifier are the released names; not used for ConvNeXt)."""
    if arch.startswith("convnext"):
        calls = convnext_reserves()
        layout = convnext_static_layout(kw=True)
        for call in calls:
            layout.pop(call[0] + ".weight")
            layout.pop(call[0] + ".bias")
        layout.update(kw_layout(calls, SETTINGS[("convnext", kw_ratio)]))
        return layout
    if arch.startswith("resnet"):
        calls = resnet_reserves(int(arch[6:]))
        settings = SETTINGS[("resnet", kw_ratio)]
        nonlocal_basis = 0.0625 if (arch, kw_ratio) == ("resnet50", 0.5) else 1.0
    else:
        half = kw_ratio == 0.5
        calls = mobilenetv2_reserves(int(arch[-3:]) / 100, half)
        settings = SETTINGS[("mobilenetv2", kw_ratio)]
        nonlocal_basis = 1.0
    layout = {k: tuple(v.shape) for k, v in static_state.items()}
    for call in calls:  # a reserved conv has no `.weight` (KW) or keeps the static one (enabled=False)
        layout.pop(call[0] + ".weight", None)
        layout.pop(call[0] + ".bias", None)
    if arch.startswith("mobilenetv2") and kw_ratio != 0.5:  # released 1x/4x: `self.classifier = nn.Linear`
        layout = {k.replace("classifier.1.", "classifier."): v for k, v in layout.items()}
    layout.update(kw_layout(calls, settings, nonlocal_basis))
    return layout
