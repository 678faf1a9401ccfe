"""``python -m bloodcells.checkpoints upgrade FILE...``: convert checkpoints of older bloodcells
(omegaconf hyperparameters, Hydra targets) to plain values, in place, for a user who trusts them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bloodcells.core.errors import UserError
from bloodcells.runs.upgrade import upgrade


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bloodcells.checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="convert an old checkpoint you trust to the safe format (in place)")
    up.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for f in args.files:
        try:
            upgrade(f)
        except UserError as err:
            print(f"bloodcells: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"{f}: upgraded; it now loads with weights_only=True")


if __name__ == "__main__":
    main()
