"""data.exclude=audit.csv: the user's decisions apply to exactly the images named, and an
audit of other data is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bloodcells.core.errors import DataError
from bloodcells.data.exclusions import apply_exclusions
from bloodcells.data.images import ImageSet
from tests.helpers import compose_config

CLASSES = ("a", "b", "c")


def image_set(n: int = 10) -> ImageSet:
    images = np.zeros((n, 8, 8, 3), np.uint8)
    return ImageSet(images, np.arange(n) % 3, [f"img{i}.png" for i in range(n)], CLASSES)


def audit_csv(path: Path, rows: list[dict]) -> Path:
    columns = ["index", "source", "given", "suggested", "self_confidence", "is_issue", "action"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({"self_confidence": "0.1", "action": "", **r})
    return path


def row(i: int, data: ImageSet, suggested: str, is_issue: bool, action: str = "") -> dict:
    given = CLASSES[data.labels[i]]
    return {
        "index": i,
        "source": data.sources[i],
        "given": given,
        "suggested": suggested,
        "is_issue": is_issue,
        "action": action,
    }


def test_actions_drop_and_relabel_exactly_the_rows_named(tmp_path):
    data = image_set()
    path = audit_csv(
        tmp_path / "a.csv",
        [
            row(1, data, "c", True, "drop"),
            row(2, data, "a", True, "relabel"),
            row(4, data, "a", True, "keep"),
            row(5, data, "a", False),
        ],
    )
    out, dropped = apply_exclusions(data, path)
    assert dropped.tolist() == [1]
    assert out.labels[2] == 0 and out.labels[4] == data.labels[4]
    assert np.array_equal(np.delete(out.labels, 2), np.delete(data.labels, 2))


def test_without_any_action_every_flagged_row_is_dropped(tmp_path):
    data = image_set()
    path = audit_csv(tmp_path / "a.csv", [row(3, data, "b", True), row(6, data, "b", True), row(7, data, "a", False)])
    _, dropped = apply_exclusions(data, path)
    assert dropped.tolist() == [3, 6]


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"source": "other.png"}, "not 'other.png'"),
        ({"index": 99}, "image 99"),
        ({"action": "burn"}, "action 'burn'"),
        ({"index": "x"}, "not a number"),
    ],
)
def test_an_audit_of_other_data_or_a_bad_row_is_refused(tmp_path, bad, named):
    data = image_set()
    path = audit_csv(tmp_path / "a.csv", [{**row(1, data, "c", True, "drop"), **bad}])
    with pytest.raises(DataError, match=named):
        apply_exclusions(data, path)


def test_the_datamodule_leaves_dropped_images_out_of_every_split(tmp_path):
    from bloodcells.runs.build import build_datamodule

    cfg = compose_config("train", ["model=tiny"], str(tmp_path))
    plain = build_datamodule(cfg)
    plain.setup()
    victims = plain.splits["train"][:3]
    rows = [
        {
            "index": int(i),
            "source": plain.data.sources[i],
            "given": plain.class_names[plain.data.labels[i]],
            "suggested": plain.class_names[0],
            "is_issue": True,
            "action": "drop",
        }
        for i in victims
    ]
    cfg.data.exclude = str(audit_csv(tmp_path / "a.csv", rows))
    excluded = build_datamodule(cfg)
    excluded.setup()
    assert len(excluded.splits["all"]) == len(plain.splits["all"]) - 3
    assert not np.isin(victims, excluded.splits["all"]).any()
    assert excluded.split_definition()["exclude"] == cfg.data.exclude
