"""Evaluate a detector checkpoint: `python -m detection.test CONFIG CHECKPOINT [--out PREFIX]`.

Prints pycocotools' 12-number summary for bbox (and segm for Mask R-CNN), writes the COCO result files
`PREFIX.bbox.json` / `PREFIX.segm.json` and the metrics `PREFIX.metrics.json` (PREFIX defaults to
<work dir>/results). The checkpoint may be ours or a released ODConv/mmdet detector's: both backbone layouts
load, and every key must fit. Several processes: `torchrun --nproc_per_node N -m detection.test ... --launcher pytorch`.
"""
from __future__ import annotations

from .stack import exit_if_missing


def main(argv: list[str] | None = None) -> None:
    exit_if_missing()
    from .cli import parser, prepare_launch, run

    p = parser("Evaluate an mmdet detector checkpoint on its config's test set (COCO metrics).")
    p.add_argument("checkpoint", help="a checkpoint written by detection.train (work_dir/epoch_N.pth) or a released "
                   "detector's (backbone under backbone.* instead of backbone.body.*)")
    p.add_argument("--out", help="prefix of the result files (default <work dir>/results)")
    args = p.parse_args(argv)

    def go():
        from .runner import load_config, test

        cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher, args.seed)
        prepare_launch(cfg)
        metrics = test(cfg, args.checkpoint, args.out)
        print("metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not isinstance(v, str)))
        for text in (v for v in metrics.values() if isinstance(v, str)):
            print(f"warning: {text}")

    run(go)


if __name__ == "__main__":
    main()
