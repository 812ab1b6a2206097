"""KernelWarehouse layers: `KWConv1d`, `KWConv2d`, `KWConv3d` and `KWLinear`, and their attention.

Li, Yao. "KernelWarehouse: Rethinking the Design of Dynamic Convolution." ICML 2024.
https://arxiv.org/abs/2406.07879 (released code: github.com/OSVAI/KernelWarehouse, modules/kernel_warehouse.py)

A KW layer owns no kernel. Its static kernel W (C_out, C_in/g, k...) is cut into m cells of shape
(c_out, c_in, 1...) (c_out, c_in and the cell count n set by the warehouse, see odconv/warehouse.py), and for each
sample every cell ("mixture") is a linear mix of the n cells of the warehouse E the layer shares with the other
layers of its stage: ``W[b] = assemble(alpha[b] @ E)``. The attention alpha (B, m, n) is computed from the input:
global average pool, fc1, norm (BatchNorm1d, LayerNorm for ConvNeXt), ReLU, fc2 to n+1 logits per mixture, each
mixture divided by the sum of the absolute values of its logits (no softmax: attentions may be negative), then
blended with a fixed one-hot assignment beta with weight tau, and the last ("zero cell") logit dropped.
At tau = 1 each layer is a static conv whose kernel is its own disjoint cells of the warehouse (the released
initialisation); tau is annealed 1 -> 0 early in training and is 0 afterwards and at evaluation.

State-dict names and shapes are the released ones: `<layer>.attention.fc1.weight`, `.norm1.*`, `.fc2.*`
(`.fc3.weight` and `.basis_bias` with a non-local basis), `<layer>.bias` if any, and no `<layer>.weight`: the cells
live in the manager's `warehouse_manager.weights.{k}`. beta and tau are not saved (rebuilt by the allocation).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .dispatch import select_per_sample
from .formulations.bmm import conv_per_sample_taps
from .formulations.grouped import conv_per_sample, data_tap_box

IntOrTuple = Union[int, Sequence[int]]
NORMS = ("batch", "layer")


def _ntuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {value}")
    return value


class KWAttention(nn.Module):
    """The released attention of one KW layer: (B, C_in, ...) -> (B, m, n) cell weights.

    `num_cells` n is the warehouse's cell count, `num_mixtures` m the layer's. With `nonlocal_basis_ratio` < 1
    (released for ResNet50 1/2x) fc2 emits, per mixture, logits for the layer's own `cell_num_ratio * m` cells,
    for a basis of `max(int(nonlocal * ratio), 16)` vectors and for the zero cell; `fc3` maps the basis to the
    warehouse's other ("non-local") cells and `basis_bias` is added, which saves parameters in big warehouses.
    """

    def __init__(
        self, in_channels: int, reduction: float, num_cells: int, num_mixtures: int, norm: str = "batch",
        cell_num_ratio: float = 1.0, nonlocal_basis_ratio: float = 1.0, start_cell: int = 0, device=None, dtype=None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"KW attention norm must be one of {list(NORMS)}, got {norm!r}")
        dd = dict(device=device, dtype=dtype)
        hidden = max(int(in_channels * reduction), 16)
        self.num_cells = num_cells
        self.num_mixtures = num_mixtures
        self.per_mixture = num_cells + 1  # the cells and the zero cell
        self.start_cell = start_cell
        # BatchNorm's shift makes fc1's bias redundant; LayerNorm normalises per sample, so fc1 keeps it.
        self.fc1 = nn.Linear(in_channels, hidden, bias=norm != "batch", **dd)
        self.norm1 = nn.BatchNorm1d(hidden, **dd) if norm == "batch" else nn.LayerNorm(hidden, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.num_local_cells = int(cell_num_ratio * num_mixtures)
        self.num_nonlocal_cells = num_cells - self.num_local_cells
        if nonlocal_basis_ratio >= 1.0:
            self.num_basis = 0
            self.fc2 = nn.Linear(hidden, self.per_mixture * num_mixtures, bias=True, **dd)
        else:
            self.num_basis = max(int(self.num_nonlocal_cells * nonlocal_basis_ratio), 16)
            self.fc2 = nn.Linear(hidden, (self.num_local_cells + self.num_basis + 1) * num_mixtures, bias=False, **dd)
            self.fc3 = nn.Linear(self.num_basis, self.num_nonlocal_cells, bias=False, **dd)
            self.basis_bias = nn.Parameter(torch.zeros(self.per_mixture * num_mixtures, **dd))
        # beta: the fixed one-hot assignment (set by `assign`), and tau, its blending weight. Buffers, so they follow
        # .to(device) and a changing tau is data (no recompilation under torch.compile); not saved, as released.
        self.register_buffer("assignment", torch.zeros(self.per_mixture * num_mixtures, **dd), persistent=False)
        self.register_buffer("tau", torch.zeros((), **dd), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As released: He (fan_out) for every linear map, zero biases, the norm at identity.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.ones_(self.norm1.weight)
        nn.init.zeros_(self.norm1.bias)

    def assign(self, start_cell: int, cells_per_mixture: float) -> int:
        """Set beta, the released initial assignment, from warehouse cell `start_cell`; returns the next free cell.

        ratio >= 1: mixture i gets cell start + i * int(ratio) (one-hot; the int(ratio) - 1 cells after it are the
        layer's too, unassigned). ratio < 1 (k = 1/ratio mixtures per cell): mixture i gets a new cell when
        i % k == (i // k) % k, the zero cell otherwise."""
        beta = torch.zeros(self.num_mixtures, self.per_mixture)
        if cells_per_mixture >= 1.0:
            step = int(cells_per_mixture)
            for i in range(self.num_mixtures):
                beta[i, start_cell] = 1
                start_cell += step
        else:
            k = int(1.0 / cells_per_mixture)
            for i in range(self.num_mixtures):
                if i % k == (i // k) % k:
                    beta[i, start_cell] = 1
                    start_cell += 1
                else:
                    beta[i, -1] = 1
        with torch.no_grad():
            self.assignment.copy_(beta.flatten())
        return start_cell

    def update_temperature(self, tau: float) -> None:
        self.tau.fill_(float(tau))

    def _logits(self, h: Tensor) -> Tensor:
        """(B, m * (n + 1)) logits: fc2's, or with a non-local basis fc2's local/basis/zero logits expanded."""
        z = self.fc2(h)
        if not self.num_basis:
            return z
        z = z.reshape(-1, self.num_local_cells + self.num_basis + 1)
        local, basis, zero = z[:, :self.num_local_cells], z[:, self.num_local_cells:-1], z[:, -1:]
        nonlocal_ = self.fc3(basis)
        s = self.start_cell  # the layer's own cells sit at [start, start + local) in the warehouse
        z = torch.cat([nonlocal_[:, :s], local, nonlocal_[:, s:], zero], dim=1)
        return z.reshape(h.shape[0], -1) + self.basis_bias

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.flatten(2).mean(-1)
        z = self._logits(self.act1(self.norm1(self.fc1(pooled))))
        b = z.shape[0]
        z = z.reshape(b, self.num_mixtures, self.per_mixture)
        z = z / (z.abs().sum(-1, keepdim=True) + 1e-3)
        beta = self.assignment.view(self.num_mixtures, self.per_mixture).to(z.dtype)
        tau = self.tau.to(z.dtype)
        z = (1.0 - tau) * z + tau * beta
        return z[..., :-1]  # the zero cell contributes nothing


class KWConvNd(nn.Module):
    """A KernelWarehouse convolution in `dimension` dimensions (KWConv1d/2d/3d). Built without cells: a
    `WarehouseManager` registers it (`reserve` or `add`), creates the warehouses (`store`) and then builds its
    attention and initial assignment (`allocate`); it computes nothing before that."""

    dimension = 0

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = False,
        device=None, dtype=None,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError(f"in_channels, out_channels and groups must be positive, got {in_channels}, "
                             f"{out_channels}, {groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        n = self.dimension
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.padding = _ntuple(padding, n, "padding")
        self.dilation = _ntuple(dilation, n, "dilation")
        # As released: a zero-initialised bias added after the conv (ConvNeXt's convs have one).
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.factory_kwargs = dict(device=device, dtype=dtype)  # where the manager creates the warehouse
        self.warehouse_id: Optional[int] = None
        self.warehouse_name: Optional[str] = None
        self._manager: list = []  # in a list so the shared manager is not registered as this layer's submodule
        self.formulation: Optional[str] = None  # as DynamicConv2d: None lets the dispatch pick
        self.attention: Optional[KWAttention] = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The static kernel's shape, which the layer's cells tile."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def attach(self, manager, warehouse_id: int, warehouse_name: str) -> None:
        self._manager[:] = [manager]
        self.warehouse_id, self.warehouse_name = warehouse_id, warehouse_name

    def init_attention(self, cells: Tensor, start_cell: int, reduction: float, cell_num_ratio: float, norm: str,
                       nonlocal_basis_ratio: float) -> int:
        """Build the attention for warehouse `cells` (n, c_out, c_in, 1...) and the initial assignment from
        `start_cell`; returns the next free cell (called by `WarehouseManager.allocate`)."""
        n, c_out, c_in = cells.shape[:3]
        self.cell_shape = tuple(cells.shape[1:])
        self.groups_out = self.out_channels // c_out
        self.groups_in = self.in_channels // self.groups // c_in
        self.groups_spatial = math.prod(k // c for k, c in zip(self.kernel_size, cells.shape[3:]))
        mixtures = self.groups_out * self.groups_in * self.groups_spatial
        dd = dict(device=cells.device, dtype=cells.dtype)
        self.attention = KWAttention(self.in_channels, reduction, n, mixtures, norm, cell_num_ratio,
                                     nonlocal_basis_ratio, start_cell, **dd)
        return self.attention.assign(start_cell, cell_num_ratio)

    @property
    def num_mixtures(self) -> int:
        return self.attention.num_mixtures

    def warehouse(self) -> Tensor:
        if not self._manager or self.attention is None:
            raise RuntimeError(f"{type(self).__name__} has no warehouse yet: register it with a WarehouseManager "
                               "(reserve/add), then call the manager's store() and allocate(network)")
        return self._manager[0].take_cell(self.warehouse_id)

    def _mixed_cells(self, alpha: Tensor, cells: Tensor, box) -> tuple[Tensor, tuple[int, ...]]:
        """The cells mixed by alpha (B, m, n): (B, taps, out-group, in-group, c_out, c_in) and the kernel's taps.
        Mixtures run (spatial, out-group, in-group), spatial slowest, as released. With `box` (a slice of taps per
        spatial dim) just those taps' mixtures are computed."""
        b, n = alpha.shape[0], cells.shape[0]
        taps = self.kernel_size
        if box is not None:
            alpha = alpha.view(b, *taps, -1, n)[(slice(None), *box)]
            taps = tuple(t.stop - t.start for t in box)
        mixed = alpha.reshape(-1, n) @ cells.reshape(n, -1).to(alpha.dtype)  # (B*m, c_out*c_in)
        c_out, c_in = self.cell_shape[:2]
        return mixed.view(b, -1, self.groups_out, self.groups_in, c_out, c_in), taps

    def assemble(self, alpha: Tensor, cells: Tensor, box: Optional[tuple[slice, ...]] = None) -> Tensor:
        """Per-sample kernels (B, C_out, C_in/g, k...) from the cell weights alpha (B, m, n) and the warehouse: a
        mixture's c_out x c_in cell lands at out-group o, in-group i, kernel tap s. With `box`, only the taps in
        it: (B, C_out, C_in/g, *box sizes)."""
        mixed, taps = self._mixed_cells(alpha, cells, box)
        # -> (B, out-group, c_out, in-group, c_in, tap): output channel o*c_out + r, input channel i*c_in + s.
        return mixed.permute(0, 2, 4, 3, 5, 1).reshape(alpha.shape[0], *self.weight_shape[:2], *taps)

    def assemble_tap_major(self, alpha: Tensor, cells: Tensor, box: Optional[tuple[slice, ...]] = None) -> Tensor:
        """The same kernels tap-major, (B, taps, C_out, C_in/g): the GEMM's own output order (no transposition
        where the in-groups are 1), as `conv_per_sample_taps` takes them."""
        mixed, taps = self._mixed_cells(alpha, cells, box)
        if self.groups_in > 1:
            mixed = mixed.permute(0, 1, 2, 4, 3, 5)
        return mixed.reshape(alpha.shape[0], math.prod(taps), *self.weight_shape[:2])

    def forward(self, x: Tensor) -> Tensor:
        cells = self.warehouse()
        formulation = select_per_sample(self.formulation, x, self.weight_shape, self.stride, self.padding,
                                        self.dilation, self.groups, cells.shape[0])
        alpha = self.attention(x)
        # Taps that only ever see the padding (maps smaller than the kernel) are neither assembled nor convolved.
        crop = data_tap_box(x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        box, padding = crop if crop is not None else (None, self.padding)
        kernel_size = tuple(t.stop - t.start for t in box) if box is not None else self.kernel_size
        if formulation == "bmm":
            kernels = self.assemble_tap_major(alpha, cells, box)
            out = conv_per_sample_taps(x, kernels, kernel_size, self.stride, padding, self.dilation)
        else:
            kernels = self.assemble(alpha, cells, box)
            out = conv_per_sample(x, kernels, self.stride, padding, self.dilation, self.groups)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, *([1] * self.dimension)).to(out.dtype)
        return out

    def update_temperature(self, tau: float) -> None:
        """tau, the weight of the initial assignment (released name)."""
        if self.attention is not None:
            self.attention.update_temperature(tau)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is not None:
            s += ", bias=True"
        return s + f", warehouse={self.warehouse_name!r}"


class KWConv1d(KWConvNd):
    dimension = 1


class KWConv2d(KWConvNd):
    dimension = 2


class KWConv3d(KWConvNd):
    dimension = 3


class KWLinear(nn.Module):
    """A KW fully connected layer: a 1x1 `KWConv1d` over the tokens (released; its state-dict names carry
    `.conv.`). Input (B, ..., C_in) -> (B, ..., C_out); the attention pools over all positions of a sample."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.conv = KWConv1d(in_features, out_features, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = self.conv(x.reshape(shape[0], -1, shape[-1]).transpose(1, 2))
        return y.transpose(1, 2).reshape(*shape[:-1], -1)

    def update_temperature(self, tau: float) -> None:
        self.conv.update_temperature(tau)


KW_LAYERS = {"conv1d": KWConv1d, "conv2d": KWConv2d, "conv3d": KWConv3d, "linear": KWLinear}
