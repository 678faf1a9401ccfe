"""Clean a dataset: ``python -m bloodcells.clean data=npz data.reader.path=training_set.npz``.

Writes into its run dir: report.json (counts per decision and class, every group with its
members, the ``removed`` input indices), contact sheets of the largest groups and of the
outliers, the mean-pixel histogram, and cleaned.npz (images, labels, source index), which
``data=npz data.reader.path=<run dir>/cleaned.npz`` trains on. With ``audit=<npz|folder>`` it also
lists the audited images that have a near-duplicate in the data (train/test leakage).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bloodcells.cleaning.contact_sheet import contact_sheet, mean_pixel_histogram
from bloodcells.cleaning.pipeline import CleanReport, clean_dataset, cross_duplicates
from bloodcells.data.images import ImageSet
from bloodcells.data.readers import read_unlabelled
from bloodcells.runs.build import build_reader


def write_clean_outputs(out_dir: Path, data: ImageSet, report: CleanReport, max_groups: int = 20) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    groups = report.groups[:max_groups]
    names = data.class_names
    contact_sheet(
        out_dir / "groups.png",
        data.images,
        [g["members"] for g in groups],
        [[f"{i} {names[data.labels[i]][:5]}" for i in g["members"]] for g in groups],
        [f"{g['decision']}\n{g['size']} imgs" for g in groups],
    )
    outliers = report.outliers[:50]
    contact_sheet(
        out_dir / "outliers.png",
        data.images,
        [[o["index"] for o in outliers[r : r + 10]] for r in range(0, len(outliers), 10)],
        [[f"{o['index']} z{o['max_abs_z']:.0f}" for o in outliers[r : r + 10]] for r in range(0, len(outliers), 10)],
        ["outliers"] * ((len(outliers) + 9) // 10),
    )
    mean_pixel_histogram(out_dir / "mean_pixel_histogram.png", data.images, report.removed)
    keep = np.flatnonzero(report.keep_mask())
    labels = data.labels.copy()
    for i, new in report.relabelled.items():
        labels[i] = new
    np.savez_compressed(out_dir / "cleaned.npz", images=data.images[keep], labels=labels[keep], source_index=keep)


def audit(
    out_dir: Path, data: ImageSet, audit_path: str, hash: str, threshold: int, min_correlation: float | None
) -> list[dict]:
    """Images of ``audit_path`` with a near-duplicate in ``data``, plus a contact sheet."""
    images, sources = read_unlabelled(audit_path)
    pairs = cross_duplicates(images, data.images, hash, threshold, min_correlation)
    found = [{"audit": sources[q], "audit_index": q, "data_index": r, "data_source": data.sources[r]} for q, r in pairs]
    (out_dir / "audit.json").write_text(
        json.dumps(
            {"audited": len(images), "with_duplicate_in_data": len({f["audit_index"] for f in found}), "pairs": found},
            indent=1,
        )
    )
    both = np.concatenate([images, data.images]) if images.shape[1:] == data.images.shape[1:] else None
    if both is not None and found:
        rows = [[f["audit_index"], len(images) + f["data_index"]] for f in found[:30]]
        contact_sheet(
            out_dir / "audit.png",
            both,
            rows,
            [["audit", "data"]] * len(rows),
            [f["audit"][:20] for f in found[:30]],
            max_cols=2,
        )
    return found


def clean(cfg: DictConfig) -> CleanReport:
    out_dir = Path(cfg.paths.output_dir)
    data: ImageSet = build_reader(cfg)(class_names=tuple(cfg.class_names))
    start = time.perf_counter()
    report = clean_dataset(data.images, data.labels, data.class_names, **cfg.data.clean_options)
    seconds = time.perf_counter() - start
    write_clean_outputs(out_dir, data, report)
    print(
        f"{len(data)} images, {len(report.groups)} duplicate groups {report.counts['groups_by_decision']}, "
        f"{len(report.outliers)} outliers flagged; removed {len(report.removed)} ({seconds:.1f} s)"
    )
    if cfg.get("audit"):
        found = audit(
            out_dir,
            data,
            cfg.audit,
            cfg.data.clean_options.hash,
            cfg.data.clean_options.threshold,
            cfg.data.clean_options.min_correlation,
        )
        print(
            f"audit: {len({f['audit_index'] for f in found})} images of {cfg.audit} have a near-duplicate in the data"
        )
    print(f"Run dir: {out_dir}  (report.json, groups.png, outliers.png, mean_pixel_histogram.png, cleaned.npz)")
    return report
