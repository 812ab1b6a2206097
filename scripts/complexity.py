"""Params and MACs of every member of the dynamic-convolution family, beside the published figures.

    python scripts/complexity.py [--arch resnet18 mobilenetv2_100 ...] [--family od kw fd ...] [--out table.md]

Prints up to four tables: the paper's ODConv rows (ours beside the published figures; rows more than 1% away carry
a note saying why), every family per architecture at 224x224 (static, ODConv 1x/4x, CondConv 8x, DyConv 4x,
KernelWarehouse 1x/4x and DCD where released, FDConv on the ResNets) with the published parameter count where a
source gives one, each member on the ResNet50 backbone over the static one beside the FDConv paper's Table 1
(parameters, FLOPs, COCO AP), and the released KernelWarehouse rows (README params and accuracy; no MACs
published). `--family` keeps the rows of the given members (the ODConv table needs `od` or `static`, the
KernelWarehouse table `kw`). MAC convention: models/complexity.py and docs/family.md.

Models are built on the meta device and run once each: counting needs shapes only, so even CondConv ResNet101
costs no memory, and every (model, settings, input size) is built and counted once per call.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402

import models  # noqa: E402
from models.complexity import count_macs, count_params, on_meta  # noqa: E402
from models.published import (  # noqa: E402
    COMPARISON_ROWS, FAMILY_COCO_ROWS, KW_ROWS, OVERHEAD_ROWS, PAPER_ROWS)
from odconv import convert_to_fdconv  # noqa: E402

# The family table's rows: (member key for --family, label, model prefix, layer kwargs). KW and DCD appear for the
# architectures they released; FDConv (a converted static network, kernel_num 64 as its detection configs) for the
# ResNets, where every converted layer's spectrum splits into 64 equal bands.
FAMILIES = (
    ("static", "static", "static_", {}),
    ("od", "ODConv (1x)", "od_", {"kernel_num": 1}),
    ("od", "ODConv (4x)", "od_", {"kernel_num": 4}),
    ("condconv", "CondConv (8x)", "condconv_", {"num_experts": 8}),
    ("dyconv", "DyConv (4x)", "dyconv_", {"kernel_num": 4}),
    ("kw", "KW (1x)", "kw_", {"kw_ratio": 1}),
    ("kw", "KW (4x)", "kw_", {"kw_ratio": 4}),
    ("dcd", "DCD", "dcd_", {}),
    ("fd", "FDConv", "fd_", {"kernel_num": 64}),
)
MEMBERS = tuple(dict.fromkeys(f[0] for f in FAMILIES))
DETECTION_INPUT = (3, 800, 1280)  # the usual detection FLOPs input (mmdet's get_flops: 1280 x 800)


def available(prefix: str, arch: str) -> bool:
    """Whether the zoo builds `prefix + arch` (KW and DCD only where released, FDConv on the ResNets)."""
    if prefix == "kw_":
        return prefix + arch in models.KW_MODEL_NAMES
    if prefix == "dcd_":
        return prefix + arch in models.DCD_MODEL_NAMES
    if prefix == "fd_":
        return arch.startswith("resnet")
    return True


def build(name: str, **kwargs):
    """A model on the meta device (shapes only: no memory, nothing computed). `fd_<arch>` is the static network
    converted by `odconv.convert_to_fdconv` (stem and shortcuts static, as released), `kernel_num` its bands."""
    with on_meta():  # KW networks create their warehouses after the layers: build all under meta
        if name.startswith("fd_"):
            kernel_num = kwargs.pop("kernel_num", 64)
            return convert_to_fdconv(timm.create_model("static_" + name[3:], **kwargs), kernel_num=kernel_num)
        return timm.create_model(name, **kwargs)


@functools.lru_cache(maxsize=None)
def _counts(name: str, kwargs: tuple, input_size: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    model = build(name, **dict(kwargs))
    return count_params(model), count_macs(model, input_size)


def counts(name: str, input_size: tuple[int, ...] = (3, 224, 224), **kwargs) -> tuple[int, dict[str, int]]:
    """(params, MACs by kind) of a model; each (model, kwargs, input size) is built and counted once."""
    return _counts(name, tuple(sorted(kwargs.items())), tuple(input_size))


def _paper_counts(arch: str, kernel_num: int, **kwargs) -> tuple[int, dict[str, int]]:
    if not kernel_num:
        return counts(f"static_{arch}", **kwargs)
    return counts(f"od_{arch}", kernel_num=kernel_num, **kwargs)


def table_rows(archs: list[str]) -> list[dict]:
    """One dict per published ODConv row of the given architectures, with our counts and the explanation."""
    rows = []
    for (arch, k), paper in PAPER_ROWS.items():
        if arch not in archs:
            continue
        params, macs = _paper_counts(arch, k)
        row = dict(label=paper.label, arch=arch, kernel_num=k, params=params, macs=macs, paper=paper)
        if arch.startswith("resnet") and arch != "resnet18":
            row["macs_caffe"] = _paper_counts(arch, k, style="caffe")[1]["total"]
        rows.append(row)
    baseline = {r["arch"]: r for r in rows if r["kernel_num"] == 0}
    for r in rows:
        r["note"] = _note(r, baseline.get(r["arch"]))
    return rows


def _note(r: dict, base: dict | None) -> str:
    ours, paper = r["macs"]["total"] / 1e6, r["paper"].macs
    if abs(ours / paper - 1) <= 0.01:
        return ""
    if "macs_caffe" in r and r["kernel_num"] == 0 and abs(r["macs_caffe"] / 1e6 / paper - 1) <= 0.01:
        return (
            f"published figure counts the stride on the first 1x1 conv (ResNet v1, He et al.): that count gives "
            f"{r['macs_caffe'] / 1e6:.1f}M; the released model, torchvision and ours stride the 3x3 (v1.5)"
        )
    dyn = {k: r["macs"][k] / 1e6 for k in ("attention", "aggregation", "products")}
    ours_delta = sum(dyn.values())
    note = (
        f"ODConv adds {ours_delta:.1f}M here (attention {dyn['attention']:.1f}, kernel aggregation "
        f"{dyn['aggregation']:.1f}, attention products {dyn['products']:.1f})"
    )
    if base is not None:
        note += f"; the published table adds {paper - base['paper'].macs:.1f}M over its baseline by an undocumented convention"
    if "macs_caffe" in r:
        note += "; and its baseline strides the first 1x1 (see the baseline row)"
    return note


def family_rows(archs: list[str], members: tuple[str, ...] = MEMBERS) -> list[dict]:
    """One dict per (architecture, family): params, MACs, and the published count where a source has one."""
    rows = []
    for arch in archs:
        static_macs = counts("static_" + arch)[1]["total"]
        for member, label, prefix, layer_kwargs in FAMILIES:
            if member not in members or not available(prefix, arch):
                continue
            name = prefix + arch
            if prefix == "kw_" and layer_kwargs["kw_ratio"] not in models.kw.RELEASED[arch]:
                continue  # KW rows only where released (ConvNeXt-T: 1x)
            if prefix != "fd_" and not timm.is_model(name):
                continue  # ConvNeXt-T has only its static and KW networks
            params, macs = counts(name, **layer_kwargs)
            kernels = next(iter(layer_kwargs.values()), 0)
            paper = PAPER_ROWS.get((arch, kernels if prefix == "od_" else 0)) if prefix in ("od_", "static_") else None
            paper = KW_ROWS.get((arch, kernels)) if prefix == "kw_" else paper
            comparison = COMPARISON_ROWS.get((name, kernels))
            overhead = OVERHEAD_ROWS.get(name)
            rows.append(dict(
                arch=arch, family=label, name=name, params=params, macs=macs["total"],
                macs_over_static=macs["total"] / static_macs - 1,
                paper_params=paper.params if paper else comparison.params if comparison else None,
                note=comparison.note if comparison else overhead.note if overhead else "",
            ))
    return rows


def overhead_rows(members: tuple[str, ...] = MEMBERS, arch: str = "resnet50") -> list[dict]:
    """Each member in the ResNet50 backbone (no classifier) over the static one: our parameters and MACs (224x224
    and the detection input) beside the FDConv paper's Table 1 (overheads and COCO rows)."""
    base_params, base_224 = counts("static_" + arch, num_classes=0)
    base_det = counts("static_" + arch, DETECTION_INPUT, num_classes=0)[1]
    rows = []
    for member, label, prefix, layer_kwargs in FAMILIES:
        published = FAMILY_COCO_ROWS.get((prefix, next(iter(layer_kwargs.values()), 0)))
        if member not in members or published is None or not available(prefix, arch):
            continue
        params, macs = counts(prefix + arch, num_classes=0, **layer_kwargs)
        det = counts(prefix + arch, DETECTION_INPUT, num_classes=0, **layer_kwargs)[1]
        rows.append(dict(family=label, name=prefix + arch, params=params - base_params,
                         macs=macs["total"] - base_224["total"], macs_det=det["total"] - base_det["total"],
                         paper=published))
    return rows


def format_overhead_markdown(rows: list[dict]) -> str:
    size = "x".join(map(str, DETECTION_INPUT[1:]))
    lines = [
        "| Member (ResNet50 backbone) | Model | Params over static (ours) | (published) | MACs over static, 224x224 "
        f"(ours) | MACs over static, {size} (ours) | FLOPs over static detector (published) "
        "| Faster R-CNN box AP (published) | Mask R-CNN box / mask AP (published) | Note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    fmt = lambda v, spec, unit: "-" if v is None else format(v, spec) + unit  # noqa: E731
    for r in rows:
        p = r["paper"]
        mask = "-" if p.mask_box is None else f"{p.mask_box:.1f} / {p.mask_mask:.1f}"
        lines.append(
            f"| {'static' if r['family'] == 'static' else r['family']} | `{r['name']}` | {r['params'] / 1e6:+.2f}M "
            f"| {fmt(p.params, '+.1f', 'M')} | {r['macs'] / 1e6:+.1f}M | {r['macs_det'] / 1e9:+.2f}G "
            f"| {fmt(p.gflops, '+.2f', 'G')} | {fmt(p.faster_box, '.1f', '')} | {mask} | {p.note} |"
        )
    return "\n".join(lines)


def kw_rows(archs: list[str]) -> list[dict]:
    """One dict per released KernelWarehouse ImageNet row (and its baseline) of the given architectures."""
    rows = []
    for (arch, ratio), paper in KW_ROWS.items():
        if arch not in archs:
            continue
        params, macs = counts(f"kw_{arch}", kw_ratio=ratio) if ratio else counts(f"static_{arch}")
        rows.append(dict(arch=arch, kw_ratio=ratio, params=params, macs=macs["total"], paper=paper))
    return rows


def format_kw_markdown(rows: list[dict]) -> str:
    lines = [
        "| KernelWarehouse model | Params (ours) | Params (published) | MACs (ours) | Top-1 / top-5 (published) "
        "| Note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        note = ""
        if round(r["params"] / 1e6, 2) != r["paper"].params:
            note = (f"{r['params']:,} by the released code and config, which the re-stated released layout in "
                    "tests/kw_released_layout.py reproduces; the README prints another figure")
        lines.append(f"| {r['paper'].label} | {r['params'] / 1e6:.2f}M | {r['paper'].params:.2f}M "
                     f"| {r['macs'] / 1e6:.1f}M | {r['paper'].top1:.2f} / {r['paper'].top5:.2f} | {note} |")
    return "\n".join(lines)


def format_family_markdown(rows: list[dict]) -> str:
    lines = [
        "| Architecture | Family | Model | Params (ours) | Params (published) | MACs (ours) | MACs over static | Note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        paper = f"{r['paper_params']:.2f}M" if r["paper_params"] is not None else "-"
        lines.append(
            f"| {r['arch']} | {r['family']} | `{r['name']}` | {r['params'] / 1e6:.2f}M | {paper} "
            f"| {r['macs'] / 1e6:.1f}M | {100 * r['macs_over_static']:+.1f}% | {r['note']} |"
        )
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    lines = [
        "| Model | Params (ours) | Params (published) | MACs (ours) | MACs (published) | Diff | Note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ours = r["macs"]["total"] / 1e6
        paper = r["paper"].macs
        unit = lambda v: f"{v / 1000:.3f}G" if paper >= 1000 else f"{v:.1f}M"  # noqa: E731
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['paper'].params:.2f}M | {unit(ours)} | {unit(paper)} "
            f"| {100 * (ours / paper - 1):+.1f}% | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    archs = [*models.registry.ARCHS, "convnext_tiny"]  # ConvNeXt-T: KernelWarehouse's rows only
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=archs, choices=archs, help="architectures to count")
    parser.add_argument("--family", nargs="+", default=list(MEMBERS), choices=MEMBERS,
                        help="members to count (default: all)")
    parser.add_argument("--out", type=Path, help="also write the Markdown tables to this file")
    args = parser.parse_args(argv)
    members = tuple(args.family)
    tables = []
    if {"static", "od"} & set(members):
        tables.append(format_markdown(table_rows(args.arch)))
    tables.append(format_family_markdown(family_rows(args.arch, members)))
    if "resnet50" in args.arch:
        tables.append(format_overhead_markdown(overhead_rows(members)))
    kw = kw_rows(args.arch) if "kw" in members else []
    if kw:
        tables.append(format_kw_markdown(kw))
    text = "\n\n".join(tables)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
