"""Train a detector: `python -m detection.train CONFIG [--work-dir DIR] [--cfg-options k=v ...]`.

Several processes: `torchrun --nproc_per_node N -m detection.train CONFIG --launcher pytorch` (add --nnodes,
--node_rank, --master_addr for several nodes). Checkpoints land in the work dir (`epoch_N.pth`, `last_checkpoint`).
"""
from __future__ import annotations

from .stack import exit_if_missing


def main(argv: list[str] | None = None) -> None:
    exit_if_missing()
    from .cli import parser, prepare_launch, run

    p = parser("Train an mmdet detector with a zoo backbone.")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from CHECKPOINT, or the work dir's latest")
    args = p.parse_args(argv)

    def go():
        from .runner import load_config, train

        cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher, args.seed)
        if args.resume is not None:
            cfg.resume = True
            cfg.load_from = None if args.resume == "auto" else args.resume
        prepare_launch(cfg)
        train(cfg)

    run(go)


if __name__ == "__main__":
    main()
