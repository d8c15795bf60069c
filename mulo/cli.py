"""Command line: ``mulo demo``, ``mulo eval``, ``mulo meta-train``.

``mulo meta-train`` started by ``torchrun --nproc_per_node=N -m mulo meta-train ...`` (``WORLD_SIZE`` > 1
in the environment, or a process group already initialized) runs the multi-process meta-trainer of
:mod:`mulo.distributed.meta_train`; otherwise the one-process one.
"""

from __future__ import annotations

import argparse
import os
import sys


def _distributed_launch() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mulo", description="μLO learned optimizer for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small μP MLP on offline digits with MuLO and AdamW")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--width", type=int, default=128)
    demo.add_argument("--depth", type=int, default=3)
    demo.add_argument("--batch", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo_out")
    ev = sub.add_parser(
        "eval", help="generalization sweeps: MuLO vs AdamW/μAdam (and an SP LO) at larger width/depth/horizon"
    )
    ev.add_argument("--out", default="bench/results/generalization.jsonl", help="JSON lines file to append to")
    ev.add_argument("--preset", default="cpu", help="quick (smoke) or cpu (the full evaluation, CPU-sized)")
    ev.add_argument("--sweeps", default="width,depth,horizon,ood_lm", help="comma list of sweeps to run (default: all)")
    ev.add_argument("--optimizers", default="mulo,adamw,muadam,sp_lo", help="comma list (default: all)")
    ev.add_argument(
        "--meta-weights",
        default=None,
        help="μLO weights: a shipped name (e.g. mulo_cpu_s2), a directory or a Hub id (default: mulo_cpu)",
    )
    ev.add_argument(
        "--sp-weights",
        default="mulo_cpu_sp",
        help="SP learned-optimizer weights for the SP-LO baseline: a shipped name (e.g. mulo_cpu_sp_s2), a "
        "directory or a Hub id (default: mulo_cpu_sp; 'none' skips it)",
    )
    from mulo.meta import cli as meta_cli

    meta_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "meta-train":
        if _distributed_launch():
            from mulo.distributed import meta_train

            raw = list(sys.argv[1:] if argv is None else argv)
            return meta_train.main(raw[raw.index("meta-train") + 1 :])
        return meta_cli.run(args)
    if args.command == "demo":
        from mulo import demo as demo_mod

        demo_mod.main(args.steps, args.width, args.depth, args.batch, args.seed, args.out)
    if args.command == "eval":
        from mulo import evaluation

        evaluation.run(
            args.out,
            args.preset,
            args.meta_weights,
            args.sp_weights,
            sweeps=tuple(args.sweeps.split(",")),
            optimizers=tuple(args.optimizers.split(",")),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
