"""Hashing is bit-exact with imagehash; cleaning finds every planted problem and nothing else."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pytest
from PIL import Image

from bloodcells.cleaning.hashing import dihedral_hashes, hex_hash, image_hash
from bloodcells.cleaning.pipeline import clean_dataset, cross_duplicates, hamming_pairs, union_find_groups
from bloodcells.cleaning.planting import plant_pollution
from bloodcells.core.errors import DataError
from bloodcells.data.readers import read_folder
from bloodcells.data.split import stratified_split
from bloodcells.runs.clean import clean
from tests.helpers import SAMPLE_DIR, compose_config

REFERENCE = {"phash": imagehash.phash, "dhash": imagehash.dhash, "average": imagehash.average_hash}


@pytest.fixture(scope="module")
def sample():
    return read_folder(SAMPLE_DIR)


@pytest.mark.parametrize("kind", ["phash", "dhash", "average"])
def test_hashes_bit_exact_with_imagehash(kind, sample, rng):
    random = rng.integers(0, 256, (60, 96, 96, 3), dtype=np.uint8)
    odd = rng.integers(0, 256, (20, 57, 83, 3), dtype=np.uint8)
    flat = np.full((3, 96, 96, 3), 200, np.uint8)
    for images in (sample.images[::4], random, odd, flat):
        ours = [hex_hash(h) for h in image_hash(images, kind)]
        theirs = [str(REFERENCE[kind](Image.fromarray(im))) for im in images]
        assert ours == theirs


def test_dihedral_hashes_are_the_hashes_of_the_variants(sample):
    images = sample.images[:10]
    hashes = dihedral_hashes(images)
    variants = []
    for k in range(4):
        r = np.rot90(images, k, axes=(1, 2))
        variants += [r, r[:, :, ::-1]]
    for v, variant in enumerate(variants):
        assert np.array_equal(hashes[:, v], image_hash(np.ascontiguousarray(variant)))


def test_hamming_pairs_chunking_and_union_find(rng):
    hashes = rng.integers(0, 2**63, (50, 8), dtype=np.uint64)
    hashes[7] = hashes[3]
    hashes[9, 2] = hashes[3, 0] ^ np.uint64(0b101)  # distance 2 to a variant of 3
    for chunk in (0, 1, 64):
        pairs = hamming_pairs(hashes, hashes, threshold=2, memory_mb=chunk)
        assert {tuple(p) for p in pairs} >= {(3, 7), (3, 9)}
    groups = union_find_groups(10, np.array([[3, 7], [7, 9], [1, 2]]))
    assert groups.tolist() == [0, 1, 1, 3, 4, 5, 6, 3, 8, 3]


def test_cleaning_finds_every_planted_item_and_drops_no_clean_image(sample):
    planted = plant_pollution(sample.images, sample.labels)
    report = clean_dataset(planted.images, planted.labels, sample.class_names, drop_outliers=True)
    removed = set(report.removed)
    assert not removed & set(range(planted.n_clean)), "a clean image was dropped"
    assert set(planted.overlay) <= removed
    assert set(planted.exact_copies) <= removed
    assert set(planted.near_copies) <= removed
    assert set(planted.colour_outliers) <= removed
    assert removed == set(planted.overlay) | set(planted.exact_copies) | set(planted.near_copies) | set(
        planted.colour_outliers
    )
    pollution = [g for g in report.groups if g["decision"] == "pollution"]
    assert len(pollution) == 1 and pollution[0]["size"] == 300
    for copy, (original, _) in planted.near_copies.items():
        assert report.group_of[copy] == report.group_of[original]
    # 20 exact + 20 near copies; the tinted outliers are recoloured copies, so they group too
    assert report.counts["groups_by_decision"]["duplicate_keep_one"] == 40 + len(planted.colour_outliers)
    flagged = {o["index"] for o in report.outliers}
    assert set(planted.colour_outliers) <= flagged <= set(planted.colour_outliers) | set(planted.overlay)


def test_conflicting_labels_dropped_or_relabelled_by_majority(sample):
    images = np.concatenate([sample.images[:5], sample.images[[0, 0, 0]]])
    labels = np.concatenate([sample.labels[:5], [5, 5, 0]])  # group of 4: labels 0,5,5,0 -> tie; make majority 5
    labels[-1] = 5
    dropped = clean_dataset(images, labels, sample.class_names)
    assert {0, 5, 6, 7} <= set(dropped.removed)
    majority = clean_dataset(images, labels, sample.class_names, conflict="majority")
    assert 0 not in majority.removed and {5, 6, 7} <= set(majority.removed)
    assert majority.relabelled == {0: 5}


def test_leak_free_split_keeps_groups_together(sample):
    planted = plant_pollution(sample.images, sample.labels, overlay_copies=0, outliers=0)
    report = clean_dataset(planted.images, planted.labels, sample.class_names, same_label="keep_all")
    groups = np.array(report.group_of)
    splits = stratified_split(planted.labels, 0.15, 0.15, seed=0, groups=groups)
    side = np.empty(len(groups), dtype=object)
    for name, idx in splits.items():
        side[idx] = name
    for g in report.groups:
        assert len({side[i] for i in g["members"]}) == 1
    train_counts = np.bincount(planted.labels[splits["train"]], minlength=8)
    assert train_counts.min() >= 0.6 * len(planted.labels) / 8


def test_edge_cases_empty_single_and_mixed_sizes(sample):
    with pytest.raises(DataError, match="holds no images"):
        clean_dataset(sample.images[:0], sample.labels[:0], sample.class_names)
    single = clean_dataset(sample.images[:1], sample.labels[:1], sample.class_names)
    assert single.removed == [] and single.groups == []
    small = np.asarray(Image.fromarray(sample.images[0]).resize((64, 64)))
    pairs = cross_duplicates(small[None], sample.images)
    assert (0, 0) in pairs


def test_clean_cli_writes_report_sheets_and_cleaned_npz(sample, tmp_path):
    planted = plant_pollution(sample.images, sample.labels, overlay_copies=60, exact=3, near=3, outliers=2)
    np.savez(tmp_path / "polluted.npz", images=planted.images, labels=planted.labels[:, None])
    np.savez(tmp_path / "test.npz", images=sample.images[:4])
    cfg = compose_config(
        "clean",
        ["data=npz", f"data.reader.path={tmp_path / 'polluted.npz'}", f"audit={tmp_path / 'test.npz'}"],
        tmp_path / "run",
    )
    report = clean(cfg)
    run = tmp_path / "run"
    for name in ("report.json", "groups.png", "outliers.png", "mean_pixel_histogram.png", "cleaned.npz", "audit.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "report.json").read_text())
    assert saved["removed"] == report.removed and len(saved["removed"]) == 60 + 3 + 3 + 2  # tinted copies too
    cleaned = np.load(run / "cleaned.npz")
    assert len(cleaned["labels"]) == len(planted.labels) - len(report.removed)
    assert json.loads((run / "audit.json").read_text())["with_duplicate_in_data"] == 4


def test_datamodule_cleans_once_then_reuses_the_cache(sample, tmp_path, monkeypatch):
    import bloodcells.data.datamodule as dm_module
    from bloodcells.data.datamodule import BloodCellDataModule
    from bloodcells.data.readers import read_npz

    planted = plant_pollution(sample.images, sample.labels, overlay_copies=60, exact=5, near=5, outliers=0)
    path = tmp_path / "polluted.npz"
    np.savez(path, images=planted.images, labels=planted.labels)

    def make() -> BloodCellDataModule:
        reader = lambda class_names: read_npz(path, class_names)  # noqa: E731
        return BloodCellDataModule(
            reader, sample.class_names, clean=True, cache_dir=str(tmp_path / "cache"), num_workers=0
        )

    first = make()
    first.setup()
    kept, splits = first.splits["all"], [first.splits[k] for k in ("train", "val", "test")]
    assert len(kept) == planted.n_clean and len(first.data) == len(planted.images)  # indexed, not copied
    assert np.array_equal(np.sort(np.concatenate(splits)), kept)  # removed images are in no split
    _, label, index = first.dataset("val")[0]
    assert label == planted.labels[index] and index in kept
    assert len(list((tmp_path / "cache").glob("clean-*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("cleaning ran again instead of using the cache")

    monkeypatch.setattr(dm_module, "clean_dataset", fail)
    second = make()
    second.setup()
    assert second.data.sources == first.data.sources
    assert all(np.array_equal(first.splits[k], second.splits[k]) for k in ("train", "val", "test"))


PBC96 = SAMPLE_DIR.parents[1].parent / "shared" / "data" / "pbc96" / "train"


def planted_hashes(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return dihedral_hashes(plant_pollution(images, labels).images)


def test_multi_index_finds_exactly_the_all_pairs_answer_on_the_sample_and_random_hashes(sample, rng):
    from bloodcells.cleaning.hamming_index import HammingIndex

    real = planted_hashes(sample.images, sample.labels)
    random = rng.integers(0, 2**63, size=(3000, 8), dtype=np.int64).astype(np.uint64)
    random[1::2, 3] = random[::2, 0] ^ np.uint64(0b1001_0110_0001)  # odd items: a rotated near-copy of the one before
    for hashes in (real, random):
        for threshold in (0, 5, 8, 12):
            exact = hamming_pairs(hashes, hashes, threshold)
            index = HammingIndex(hashes, threshold)
            assert np.array_equal(index.pairs(hashes), exact)
            assert np.array_equal(index.pairs(hashes, block=257), exact)  # pairs across query blocks
    assert len(hamming_pairs(random, random, 5)) >= 1500  # the planted pairs are there to find
    query, reference = real[:100], real[100:]  # two sets (the audit of a test set against train)
    assert np.array_equal(
        HammingIndex(reference, 8).pairs(query, same_set=False), hamming_pairs(query, reference, 8, same_set=False)
    )


@pytest.mark.slow
@pytest.mark.skipif(not PBC96.is_dir(), reason="needs ../shared/data/pbc96")
def test_multi_index_finds_exactly_the_all_pairs_answer_on_pbc96_with_planted_items():
    from bloodcells.cleaning.hamming_index import HammingIndex

    data = read_folder(PBC96)
    hashes = planted_hashes(data.images, data.labels)
    exact = hamming_pairs(hashes, hashes, 8)
    assert len(exact) > 300 * 299 // 2  # the overlay copies alone pair with each other
    assert np.array_equal(HammingIndex(hashes, 8).pairs(hashes), exact)
