"""``data.exclude=audit.csv``: apply what a user decided about an audit's suspects.

The CSV is the one ``bloodcells.audit`` writes: ``index`` (position in the input), ``source``,
``given``, ``suggested``, ``is_issue`` and ``action``. A row whose action is ``drop`` leaves
the data, ``relabel`` takes the suggested label, ``keep`` (or empty) changes nothing. A file
in which no action was filled in drops every flagged row (``is_issue``). Every row must
match the data (same source and given label at its index), so an audit of other data, or of
data changed since, is refused rather than applied to the wrong images.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from bloodcells.core.errors import DataError
from bloodcells.data.images import ImageSet

log = logging.getLogger(__name__)

ACTIONS = ("", "keep", "drop", "relabel")


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data.exclude={path}: file not found")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data.exclude={path}: not a readable CSV ({err})") from None
    needed = {"index", "source", "given", "suggested", "is_issue"}
    if rows and not needed <= set(rows[0]):
        raise DataError(f"data.exclude={path}: needs the columns {sorted(needed)} (an audit.csv), got {list(rows[0])}")
    return rows


def apply_exclusions(data: ImageSet, path: str | Path) -> tuple[ImageSet, np.ndarray]:
    """The data with the relabels applied, and the positions to drop."""
    path = Path(path)
    rows = read_rows(path)
    names = list(data.class_names)
    decided = any(r.get("action", "").strip() for r in rows)
    labels = data.labels.copy()
    dropped, relabelled = [], 0
    for line, row in enumerate(rows, start=2):
        action = row.get("action", "").strip().lower()
        if action not in ACTIONS:
            raise DataError(
                f"data.exclude={path}, line {line}: action {action!r} (use drop, relabel, keep or leave empty)"
            )
        try:
            i = int(row["index"])
        except ValueError:
            raise DataError(f"data.exclude={path}, line {line}: index {row['index']!r} is not a number") from None
        if not 0 <= i < len(data) or data.sources[i] != row["source"] or names[labels[i]] != row["given"]:
            raise DataError(
                f"data.exclude={path}, line {line}: image {i} is not {row['source']!r} labelled {row['given']!r} in "
                "this data; the audit was made on other data, or the data changed since"
            )
        if action == "drop" or (not decided and row["is_issue"].strip().lower() == "true"):
            dropped.append(i)
        elif action == "relabel":
            if row["suggested"] not in names:
                raise DataError(
                    f"data.exclude={path}, line {line}: suggested label {row['suggested']!r} is not a class"
                )
            labels[i] = names.index(row["suggested"])
            relabelled += 1
    how = "the actions filled in" if decided else "no action filled in: every flagged row"
    log.info("data.exclude=%s (%s): %d images dropped, %d relabelled", path, how, len(dropped), relabelled)
    return replace(data, labels=labels), np.unique(np.array(dropped, dtype=np.int64))
