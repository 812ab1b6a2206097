"""The published ImageNet figures of the released ODConv models (params, MACs at 224x224, top-1, top-5), of the
released KernelWarehouse models (params, top-1, top-5), and the published parameter counts of the other dynamic
convolutions where a source gives one."""
from __future__ import annotations

from typing import NamedTuple, Optional


class PaperRow(NamedTuple):
    label: str
    params: float  # millions
    macs: float  # millions of multiply-accumulates at 224x224
    top1: float
    top5: float


# (zoo architecture, kernel_num) -> row; kernel_num 0 is the static baseline. Figures from the released
# repository's tables (they differ from the paper's PDF by up to 0.3 points for a few rows: the released
# checkpoints' accuracy).
PAPER_ROWS: dict[tuple[str, int], PaperRow] = {
    ("resnet18", 0): PaperRow("ResNet18", 11.69, 1814, 70.25, 89.38),
    ("resnet18", 1): PaperRow("ResNet18 + ODConv (1x)", 11.94, 1838, 73.05, 91.05),
    ("resnet18", 4): PaperRow("ResNet18 + ODConv (4x)", 44.90, 1916, 74.19, 91.47),
    ("resnet50", 0): PaperRow("ResNet50", 25.56, 3858, 76.23, 92.97),
    ("resnet50", 1): PaperRow("ResNet50 + ODConv (1x)", 28.64, 3916, 77.87, 93.77),
    ("resnet50", 4): PaperRow("ResNet50 + ODConv (4x)", 90.67, 4080, 78.50, 93.99),
    ("resnet101", 0): PaperRow("ResNet101", 44.55, 7570, 77.44, 93.68),
    ("resnet101", 1): PaperRow("ResNet101 + ODConv (1x)", 50.82, 7675, 78.84, 94.27),
    ("resnet101", 2): PaperRow("ResNet101 + ODConv (2x)", 90.44, 7802, 79.15, 94.34),
    ("mobilenetv2_100", 0): PaperRow("MobileNetV2 (1.0x)", 3.50, 300.8, 71.65, 90.22),
    ("mobilenetv2_100", 1): PaperRow("MobileNetV2 (1.0x) + ODConv (1x)", 4.94, 311.8, 74.74, 91.95),
    ("mobilenetv2_100", 4): PaperRow("MobileNetV2 (1.0x) + ODConv (4x)", 11.51, 327.1, 75.29, 92.18),
    ("mobilenetv2_075", 0): PaperRow("MobileNetV2 (0.75x)", 2.64, 209.1, 69.18, 88.82),
    ("mobilenetv2_075", 1): PaperRow("MobileNetV2 (0.75x) + ODConv (1x)", 3.51, 217.1, 72.71, 90.85),
    ("mobilenetv2_075", 4): PaperRow("MobileNetV2 (0.75x) + ODConv (4x)", 7.50, 226.3, 74.01, 91.37),
    ("mobilenetv2_050", 0): PaperRow("MobileNetV2 (0.5x)", 1.97, 97.1, 64.30, 85.21),
    ("mobilenetv2_050", 1): PaperRow("MobileNetV2 (0.5x) + ODConv (1x)", 2.43, 101.8, 68.06, 87.67),
    ("mobilenetv2_050", 4): PaperRow("MobileNetV2 (0.5x) + ODConv (4x)", 4.44, 106.4, 70.23, 88.86),
}


class ComparisonRow(NamedTuple):
    label: str
    params: float  # millions
    note: str  # how the published count relates to ours


# The paper's comparison with earlier dynamic convolutions on ResNet18 (params only; each published count is
# rebuilt by arithmetic in its note).
# Keyed like PAPER_ROWS, by (zoo model, kernels); the notes are checked by tests/test_complexity.py.
COMPARISON_ROWS: dict[tuple[str, int], ComparisonRow] = {
    ("condconv_resnet18", 8): ComparisonRow(
        "ResNet18 + CondConv (8x)", 81.35,
        "published count = CondConv in the last three residual blocks (layer3.1, layer4) and the classifier, one "
        "routing function per block (CondConv's reference code): 81,353,120 by arithmetic; ours puts CondConv in "
        "every residual-block conv, where ODConv goes",
    ),
    ("dyconv_resnet18", 4): ComparisonRow(
        "ResNet18 + DyConv (4x)", 45.47,
        "published count = ours + DyConv in the three 1x1 shortcut convs (all convs but the stem, as the DyConv "
        "paper): 45,471,092; ours leaves the shortcuts static, as ODConv",
    ),
    # DCD (Li et al., ICLR 2021): its own paper's tables could not be read; this row is quoted by MCL (Table II).
    ("dcd_resnet18", 0): ComparisonRow(
        "ResNet18 + DCD", 14.70,
        "published count (quoted by MCL, Table II) = ours = the released resnet18_dcd: 14,703,332",
    ),
}


class OverheadRow(NamedTuple):
    label: str
    params: float  # millions, over the static network
    flops: float  # GFLOPs over the static detector, at the detection benchmark's input size
    note: str  # where it comes from and how it relates to ours


# Published overheads over the static twin where no total is published: the FDConv paper's Faster R-CNN R50 table
# (Chen et al., CVPR 2025, Table 1), its DCD row. Checked by tests/test_complexity.py.
OVERHEAD_ROWS: dict[str, OverheadRow] = {
    "dcd_resnet50": OverheadRow(
        "ResNet50 + DCD", 4.3, 0.13,
        "published +4.3M (FDConv Table 1, Faster R-CNN R50 + DCD) = ours over static_resnet50 with the dynamic "
        "classifier, 4,278,024 (the backbone alone adds 4,049,032); its +0.13 GFLOPs is far below what we count, the "
        "low-rank path as the released code runs it (Q, Phi, P at every position; a count that folds it into each "
        "sample's kernel would be far smaller): the paper does not state its convention",
    ),
}


class KWRow(NamedTuple):
    label: str
    params: float  # millions, as the README prints them
    top1: float
    top5: float


# KernelWarehouse's released ImageNet rows (OSVAI/KernelWarehouse README; no MACs published), keyed by (zoo
# architecture, kw_ratio); kw_ratio 0 is the baseline trained with the same recipe (which is why it differs from
# the ODConv table's baseline: 300 epochs of the ConvNeXt-style recipe for ResNet, 150 for MobileNetV2).
KW_ROWS: dict[tuple[str, float], KWRow] = {
    ("resnet18", 0): KWRow("ResNet18", 11.69, 70.44, 89.72),
    ("resnet18", 0.25): KWRow("ResNet18 + KW (1/4x)", 4.08, 72.73, 90.83),
    ("resnet18", 0.5): KWRow("ResNet18 + KW (1/2x)", 7.43, 73.33, 91.42),
    ("resnet18", 1): KWRow("ResNet18 + KW (1x)", 11.93, 74.77, 92.13),
    ("resnet18", 2): KWRow("ResNet18 + KW (2x)", 23.24, 75.19, 92.18),
    ("resnet18", 4): KWRow("ResNet18 + KW (4x)", 45.86, 76.05, 92.68),
    ("resnet50", 0): KWRow("ResNet50", 25.56, 78.44, 94.24),
    ("resnet50", 0.5): KWRow("ResNet50 + KW (1/2x)", 17.64, 79.30, 94.71),
    ("resnet50", 1): KWRow("ResNet50 + KW (1x)", 28.05, 80.38, 95.19),
    ("resnet50", 4): KWRow("ResNet50 + KW (4x)", 102.02, 81.05, 95.21),
    ("mobilenetv2_100", 0): KWRow("MobileNetV2 (1.0x)", 3.50, 72.04, 90.42),
    ("mobilenetv2_100", 0.5): KWRow("MobileNetV2 (1.0x) + KW (1/2x)", 2.65, 72.59, 90.71),
    ("mobilenetv2_100", 1): KWRow("MobileNetV2 (1.0x) + KW (1x)", 5.17, 74.68, 91.90),
    ("mobilenetv2_100", 4): KWRow("MobileNetV2 (1.0x) + KW (4x)", 11.38, 75.92, 92.22),
    ("mobilenetv2_050", 0): KWRow("MobileNetV2 (0.5x)", 1.97, 64.32, 85.22),
    ("mobilenetv2_050", 0.5): KWRow("MobileNetV2 (0.5x) + KW (1/2x)", 1.47, 65.20, 85.98),
    ("mobilenetv2_050", 1): KWRow("MobileNetV2 (0.5x) + KW (1x)", 2.85, 68.29, 87.93),
    ("mobilenetv2_050", 4): KWRow("MobileNetV2 (0.5x) + KW (4x)", 4.65, 70.26, 89.19),
    ("convnext_tiny", 0): KWRow("ConvNeXt-T", 28.59, 82.07, 95.86),
    ("convnext_tiny", 1): KWRow("ConvNeXt-T + KW (1x)", 39.37, 82.51, 96.07),
}


def architecture(model_name: str) -> str:
    """'od_resnet50', 'static_resnet50', 'kw_resnet50' or 'dcd_resnet50' -> 'resnet50'."""
    for prefix in ("od_", "kw_", "static_", "dcd_"):
        if model_name.startswith(prefix):
            return model_name[len(prefix):]
    return model_name


def paper_row(model_name: str, kernel_num: int) -> Optional[PaperRow]:
    """The published row of a zoo model (`kernel_num` 0 for static twins), or None if the paper has none."""
    if model_name.startswith("dcd_"):
        return None  # the ODConv paper's table has no DCD row
    k = 0 if model_name.startswith("static_") else kernel_num
    return PAPER_ROWS.get((architecture(model_name), k))


class FamilyRow(NamedTuple):
    """One member's published comparison row on a ResNet50 backbone, COCO val2017 (FDConv paper, Table 1)."""

    label: str
    params: Optional[float]  # millions over the static backbone (None: not printed)
    gflops: Optional[float]  # GFLOPs over the static detector (None: not printed); the input size is not stated
    faster_box: Optional[float]  # Faster R-CNN 1x box AP
    mask_box: Optional[float]  # Mask R-CNN 1x (AdamW) box AP
    mask_mask: Optional[float]  # Mask R-CNN 1x (AdamW) mask AP
    note: str = ""  # how the published overhead relates to ours (checked by tests/test_complexity.py)


# Chen et al., "Frequency Dynamic Convolution for Dense Image Prediction", CVPR 2025, Table 1 (arXiv 2503.18783v2;
# the same rows in github.com/Linwei-Chen/FDConv README L32-45; its KW and Mask R-CNN baseline rows equal the
# KernelWarehouse README's). Backbone ResNet50 (23.5M); baselines 43.80M / 207.1 GFLOPs (Faster R-CNN) and
# 46.5M / 260.1 GFLOPs (Mask R-CNN). Keyed by the member's zoo prefix and its kernel count (0 where it has none);
# the paper prints one overhead per member for both detectors.
FAMILY_COCO_ROWS: dict[tuple[str, int], FamilyRow] = {
    ("static_", 0): FamilyRow("ResNet50", None, None, 37.2, 39.6, 36.4),
    ("condconv_", 8): FamilyRow(
        "+ CondConv (8x)", 90.0, 0.01, 38.1, None, None,
        "published +90.0M = CondConv in the last three residual blocks only (layer4, as for the ResNet18 "
        "comparison row): 7 more kernels for each of their convs (89,915,392) and a routing FC per conv "
        "(65,608): 89,981,000; ours puts CondConv in every residual-block conv"),
    ("dyconv_", 4): FamilyRow(
        "+ DyConv (4x)", 75.3, 0.16, 38.3, 39.6, 36.6,
        "published +75.3M = ours + DyConv in the four 1x1 shortcut convs (all convs but the stem, as the DyConv "
        "paper and the ResNet18 comparison row)"),
    ("dcd_", 0): FamilyRow("+ DCD", 4.3, 0.13, 38.1, None, None,
                           "published +4.3M = ours with the dynamic classifier (see the DCD row of the family table)"),
    ("od_", 4): FamilyRow("+ ODConv (4x)", 65.1, 0.35, 39.2, 42.1, 38.6),
    ("kw_", 1): FamilyRow("+ KW (1x)", 2.5, None, None, 41.8, 38.4),
    ("kw_", 4): FamilyRow("+ KW (4x)", 76.5, None, None, 42.4, 38.9),
    ("fd_", 64): FamilyRow("+ FDConv", 3.6, 1.8, 39.4, 42.4, 38.6),
}
