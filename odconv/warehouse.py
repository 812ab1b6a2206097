"""`WarehouseManager`: the KernelWarehouse warehouses of a network, created after its layers exist.

Protocol, as released (Li and Yao, ICML 2024; modules/kernel_warehouse.py `Warehouse_Manager`):

1. every KW layer is registered under a warehouse name (`reserve` builds the layer, `add` takes a built one);
   names are fused by `sharing_range` (`stage1_layer2_conv0` -> `stage1_layer_conv` with ("layer", "conv")),
   and layers with the same fused name share one warehouse, numbered in order of first registration;
2. `store()` creates each warehouse `weights[k]` (n_k, c_out, c_in, 1...): c_in / c_out are the gcd of its
   layers' input / output channels times `cell_inplane_ratio` / `cell_outplane_ratio`, and n_k is
   `cell_num_ratio` times the number of cells its layers' kernels split into;
3. `allocate(network)` walks `network.modules()` in order and gives each KW layer its attention, its initial
   assignment (consecutive cells from where the previous layer of its warehouse stopped) and He (fan_out) init
   of those cells; every cell of every warehouse must be handed out exactly once.

`reduction`, `cell_num_ratio`, `cell_inplane_ratio` and `cell_outplane_ratio` are one value for every warehouse or
one per warehouse (in warehouse order). Cells always split the kernel spatially (1x1 cells, the released default
and the only setting its configs use).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence, Union

import torch
from torch import Tensor, nn

from .kernelwarehouse import KW_LAYERS, NORMS, KWConvNd, KWLinear

PerWarehouse = Union[float, Sequence[float]]


class WarehouseManager(nn.Module):
    def __init__(
        self, reduction: PerWarehouse = 0.0625, cell_num_ratio: PerWarehouse = 1.0,
        cell_inplane_ratio: PerWarehouse = 1.0, cell_outplane_ratio: PerWarehouse = 1.0,
        sharing_range: Iterable[str] = (), nonlocal_basis_ratio: float = 1.0, norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        if isinstance(sharing_range, str):  # the released JSONs give "layer_conv": a string is a list of names here
            sharing_range = sharing_range.split("_")
        self.sharing_range = tuple(sharing_range)
        self.settings = dict(reduction=reduction, cell_num_ratio=cell_num_ratio,
                             cell_inplane_ratio=cell_inplane_ratio, cell_outplane_ratio=cell_outplane_ratio)
        self.nonlocal_basis_ratio = float(nonlocal_basis_ratio)
        self.norm = norm
        self.names: list[str] = []  # fused warehouse names, in order of first registration
        self.layers: list[list[KWConvNd]] = []  # weakly: for shapes only; the network owns the layers
        self.weights = nn.ParameterList()

    def fuse_name(self, name: str) -> str:
        """The warehouse a layer named `name` uses: each `_`-separated part that starts with a prefix in
        `sharing_range` is replaced by the prefix (the prefix matched last wins, as released)."""
        parts = []
        for part in name.split("_"):
            fused = part
            for prefix in self.sharing_range:
                if fused.startswith(prefix):
                    fused = prefix
            parts.append(fused)
        return "_".join(parts)

    def add(self, layer: Union[KWConvNd, KWLinear], warehouse_name: str) -> Union[KWConvNd, KWLinear]:
        """Register a built KW layer under `warehouse_name` (before `store`)."""
        if len(self.weights):
            raise RuntimeError("the warehouses are stored already: register every layer before store()")
        conv = layer.conv if isinstance(layer, KWLinear) else layer
        if not isinstance(conv, KWConvNd):
            raise TypeError(f"only KW layers have a warehouse, got {type(layer).__name__}")
        fused = self.fuse_name(warehouse_name)
        if fused not in self.names:
            self.names.append(fused)
            self.layers.append([])
        idx = self.names.index(fused)
        if self.layers[idx] and self.layers[idx][0].dimension != conv.dimension:
            raise ValueError(f"warehouse {fused!r} mixes {self.layers[idx][0].dimension}-D and "
                             f"{conv.dimension}-D layers")
        self.layers[idx].append(conv)
        conv.attach(self, idx, fused)
        return layer

    def reserve(
        self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1, groups: int = 1,
        bias: bool = True, warehouse_name: str = "default", enabled: bool = True, layer_type: str = "conv2d",
        device=None, dtype=None,
    ) -> nn.Module:
        """A KW layer registered under `warehouse_name` (released signature); `enabled=False` gives the plain
        torch layer instead. `layer_type`: conv1d, conv2d, conv3d or linear."""
        if layer_type not in KW_LAYERS:
            raise ValueError(f"layer_type must be one of {list(KW_LAYERS)}, got {layer_type!r}")
        dd = dict(device=device, dtype=dtype)
        if layer_type == "linear":
            layer = KWLinear(in_channels, out_channels, bias, **dd) if enabled else \
                nn.Linear(in_channels, out_channels, bias, **dd)
        elif not enabled:
            plain = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[layer_type]
            return plain(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **dd)
        else:
            layer = KW_LAYERS[layer_type](in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                          bias, **dd)
        return self.add(layer, warehouse_name) if enabled else layer

    def setting(self, key: str, idx: int) -> float:
        value = self.settings[key]
        if isinstance(value, (int, float)):
            return float(value)
        value = list(value)
        if len(value) == 1:
            return float(value[0])
        if len(value) != len(self.names):
            raise ValueError(f"{key} has {len(value)} values but the network has {len(self.names)} warehouses "
                             f"({', '.join(self.names)}); give one value or one per warehouse")
        return float(value[idx])

    def cell_shape(self, idx: int) -> tuple[int, ...]:
        """(n, c_out, c_in, 1...) of warehouse `idx`, from its layers' kernel shapes."""
        layers = self.layers[idx]
        shapes = [layer.weight_shape for layer in layers]
        out_gcd = math.gcd(*(s[0] for s in shapes))
        in_gcd = math.gcd(*(s[1] for s in shapes))
        c_in = max(int(in_gcd * self.setting("cell_inplane_ratio", idx)), 1)
        c_out = max(int(out_gcd * self.setting("cell_outplane_ratio", idx)), 1)
        mixtures = sum(int(s[0] // c_out * s[1] // c_in) * math.prod(s[2:]) for s in shapes)
        n = max(int(mixtures * self.setting("cell_num_ratio", idx)), 1)
        return (n, c_out, c_in, *([1] * layers[0].dimension))

    def store(self) -> None:
        """Create the warehouses (uninitialised: `allocate` initialises every cell)."""
        if len(self.weights):
            raise RuntimeError("store() was called already")
        if not self.names:
            raise RuntimeError("no KW layer is registered: nothing to store")
        for idx in range(len(self.names)):
            dd = self.layers[idx][0].factory_kwargs
            self.weights.append(nn.Parameter(torch.empty(self.cell_shape(idx), **dd)))

    def allocate(self, network: nn.Module) -> None:
        """Build every KW layer's attention and initial assignment, in `network.modules()` order, and initialise
        each layer's cells with He (fan_out) over a (cells * c_out, c_in, 1...) view, as released (the fan_out
        of the static conv the layer starts as)."""
        if not len(self.weights):
            raise RuntimeError("call store() before allocate()")
        end = [0] * len(self.weights)
        for layer in network.modules():
            if not isinstance(layer, KWConvNd) or not layer._manager or layer._manager[0] is not self:
                continue
            idx = layer.warehouse_id
            cells = self.weights[idx]
            start = end[idx]
            end[idx] = layer.init_attention(cells.detach(), start, self.setting("reduction", idx),
                                            self.setting("cell_num_ratio", idx), self.norm, self.nonlocal_basis_ratio)
            if end[idx] > cells.shape[0]:
                raise ValueError(f"warehouse {idx} ({self.names[idx]}): the initial assignment needs more than its "
                                 f"{cells.shape[0]} cells; cell_num_ratio {self.setting('cell_num_ratio', idx)} "
                                 "is too small for its layers")
            with torch.no_grad():
                nn.init.kaiming_normal_(cells[start:end[idx]].view(-1, *cells.shape[2:]), mode="fan_out",
                                        nonlinearity="relu")
        for idx, used in enumerate(end):
            if used != self.weights[idx].shape[0]:
                raise ValueError(f"warehouse {idx} ({self.names[idx]}): its layers' initial assignment uses {used} "
                                 f"of its {self.weights[idx].shape[0]} cells; cell_num_ratio "
                                 f"{self.setting('cell_num_ratio', idx)} does not partition its layers")

    def take_cell(self, idx: int) -> Tensor:
        return self.weights[idx]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {self.names[k]} {tuple(w.shape)}" for k, w in enumerate(self.weights))


def build_warehouses(network: nn.Module, manager: WarehouseManager) -> nn.Module:
    """Attach `manager` to `network` as `network.warehouse_manager`, create its warehouses and allocate them:
    the last step of building a KW network whose layers were registered."""
    network.warehouse_manager = manager
    manager.store()
    manager.allocate(network)
    return network
