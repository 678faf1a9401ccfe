"""Data from several sources (laboratories, datasets): a folder level or an npz key names
each image's source, and evaluate reports metrics per source."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from bloodcells.core.errors import DataError
from bloodcells.data.readers import read_folder, read_npz
from tests.helpers import SAMPLE_DIR, run_cli, save_checkpoint, tiny_classifier


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """The sample split into root/<site>/<class>/: even files to lab_a, odd ones to lab_b."""
    root = tmp_path_factory.mktemp("sites")
    for folder in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        for i, file in enumerate(sorted(folder.glob("*.jpg"))):
            target = root / ("lab_a" if i % 2 == 0 else "lab_b") / folder.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target / file.name)
    return root


def test_a_folder_level_above_the_classes_names_each_images_source(two_sites):
    data = read_folder(two_sites)
    assert len(data) == 640 and set(data.site) == {"lab_a", "lab_b"}
    assert all(s.startswith(site + "/") for s, site in zip(data.sources, data.site))
    flat = read_folder(SAMPLE_DIR)
    assert flat.site is None
    assert np.array_equal(np.sort(data.labels), np.sort(flat.labels))


def test_a_level_that_mixes_sites_and_classes_is_refused(two_sites, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(two_sites, root)
    shutil.copytree(SAMPLE_DIR / "basophil", root / "basophil")
    with pytest.raises(DataError, match="not among the class names"):
        read_folder(root)


def test_an_npz_source_key_names_each_images_source(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(4), source=np.array(["a", "b", "a", "b"]))
    assert read_npz(tmp_path / "x.npz").site.tolist() == ["a", "b", "a", "b"]
    np.savez(tmp_path / "y.npz", images=images, labels=np.arange(4), dataset=np.array([1, 1, 2, 2]))
    assert read_npz(tmp_path / "y.npz").site.tolist() == ["1", "1", "2", "2"]
    np.savez(tmp_path / "z.npz", images=images, labels=np.arange(4), source=np.array(["a", "b"]))
    with pytest.raises(DataError, match="one name or integer per image"):
        read_npz(tmp_path / "z.npz")


def test_evaluate_reports_metrics_per_source(two_sites, tmp_path):
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    out = run_cli(
        "evaluate",
        f"ckpt_path={ckpt}",
        "data=folder",
        f"data.reader.root={two_sites}",
        "data.reader.cache_dir=null",
        "data.num_workers=0",
        "split=all",
        f"paths.output_dir={tmp_path / 'eval'}",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "by_source.csv")))
    assert [r["source"] for r in rows] == ["lab_a", "lab_b"]
    assert sum(int(r["n"]) for r in rows) == 640
    predictions = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv")))
    for row in rows:  # each source's accuracy, recomputed from predictions.csv
        mine = [p for p in predictions if p["source"].startswith(row["source"] + "/")]
        assert float(row["accuracy"]) == pytest.approx(np.mean([p["true"] == p["pred"] for p in mine]), abs=1e-6)
    body = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [r["source"] for r in body["by_source"]] == ["lab_a", "lab_b"]
    assert "By source" in (tmp_path / "eval" / "report.html").read_text()
