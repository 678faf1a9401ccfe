"""Peak memory of a training run with 2 loader workers: images memory-mapped vs in memory.

The data: pbc96's images repeated ``--copies`` times into one ``.npy`` (``data=npy``), so the
pixels outweigh the framework's own footprint. Each run is the CLI (tiny model, a few
batches); /proc is sampled every 0.1 s over the run's whole process tree (main + loader
workers). Reported, summed over the tree: the peak PSS of anonymous memory (heap: what
the run holds and cannot give back; pages shared copy-on-write with forked workers counted
once, split between the sharers) and of all memory (anonymous + the mapped file's page
cache, also counted once; the kernel can drop those file pages under pressure).

    python bench/memory.py [--copies 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, pbc96_cache

ROOT = Path(__file__).resolve().parents[1]


def rollup_kb(pid: int) -> dict[str, int]:
    """``Pss`` and ``Pss_Anon`` of one process (``/proc/PID/smaps_rollup``); zeros once it is gone."""
    values = {"Pss": 0, "Pss_Anon": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":")[0]
            if key in values:
                values[key] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue
        todo += [int(c) for c in children]
    return pids


def peak_memory(cmd: list[str]) -> dict:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_anon = peak_all = 0
    while proc.poll() is None:
        rollups = [rollup_kb(p) for p in tree(proc.pid)]
        peak_anon = max(peak_anon, sum(r["Pss_Anon"] for r in rollups))
        peak_all = max(peak_all, sum(r["Pss"] for r in rollups))
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.read()[-3000:])
    return {"peak_anon_pss_mb": round(peak_anon / 1024), "peak_pss_mb": round(peak_all / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    data = np.load(pbc96_cache())
    n = len(data["labels"]) * args.copies
    images = np.lib.format.open_memmap(work / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 96, 96, 3))
    for c in range(args.copies):
        images[c * len(data["labels"]) : (c + 1) * len(data["labels"])] = data["images"]
    images.flush()
    del images
    np.save(work / "labels.npy", np.tile(data["labels"], args.copies))
    rows = []
    for mmap in (False, True):
        cmd = [
            sys.executable,
            "-m",
            "bloodcells.train",
            "model=tiny",
            "data=npy",
            f"data.reader.images={work / 'images.npy'}",
            f"data.reader.labels={work / 'labels.npy'}",
            f"data.reader.mmap={str(mmap).lower()}",
            "data.num_workers=2",
            "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={args.batches}",
            f"+trainer.limit_val_batches={args.batches // 4}",
            "test=false",
            "callbacks=none",
            "trainer.enable_progress_bar=false",
            f"paths.log_dir={work / 'out'}",
        ]
        row = {"images": "memory-mapped" if mmap else "in memory", **peak_memory(cmd)}
        print(row, flush=True)
        rows.append(row)
    gb = n * 96 * 96 * 3 / 1e9
    emit(
        {
            "bench": "memory",
            "images": n,
            "pixels_gb": round(gb, 2),
            "workers": 2,
            "results": rows,
            "anon_ratio_in_memory_vs_mapped": round(rows[0]["peak_anon_pss_mb"] / rows[1]["peak_anon_pss_mb"], 2),
        }
    )


if __name__ == "__main__":
    main()
