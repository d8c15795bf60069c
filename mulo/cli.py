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
    from mulo import evaluation

    parser = argparse.ArgumentParser(
        prog="mulo",
        description="μLO learned optimizer for PyTorch. The algorithm: docs/ALGORITHM.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    demo = sub.add_parser(
        "demo",
        help="a plain torch.nn MLP on offline digits: MuLO (after mulo.mup.prepare) vs AdamW at a tuned lr",
        description="Train one plain torch.nn MLP on the offline 8×8 digits with MuLO (after mulo.mup.prepare, "
        "lr 1) and with AdamW at the lr of a small grid with the lowest validation loss; print the held-out "
        "test loss and accuracy of both and plot their curves (OUT/curves.png, OUT/curves.json).",
        formatter_class=defaults,
    )
    demo.add_argument("--steps", type=int, default=300, help="training steps per run")
    demo.add_argument("--width", type=int, default=128, help="hidden width")
    demo.add_argument("--depth", type=int, default=3, help="hidden layers")
    demo.add_argument("--batch", type=int, default=128, help="minibatch size")
    demo.add_argument("--seed", type=int, default=0, help="model and minibatch seed")
    demo.add_argument("--out", default="demo_out", help="directory for curves.json and curves.png")
    evaluation.add_parser(sub)
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
        return evaluation.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
