"""``python -m bloodcells.summarize SWEEP_DIR``: the summary table of a multirun (also written
after every multirun by the ``SweepSummary`` Hydra callback)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bloodcells.sweeps.summary import markdown, summarize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bloodcells.summarize")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"bloodcells: error: {args.sweep_dir}: folder not found\n")
    rows = summarize(args.sweep_dir)
    print(markdown(rows))
    print(f"\n{args.sweep_dir / 'summary.md'}")


if __name__ == "__main__":
    main()
