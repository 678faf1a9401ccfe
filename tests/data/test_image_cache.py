"""The memory-mapped image cache: built once, bit-identical batches, and a dataset larger
than the memory limit still trains (the in-memory path fails under the same limit)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from bloodcells.data import image_cache, readers
from bloodcells.runs.build import build_datamodule
from tests.helpers import PROJECT_ROOT, SAMPLE_DIR, compose_config


def datamodule(tmp_path, cache_dir):
    cfg = compose_config(
        "train",
        ["data=folder", f"data.reader.root={SAMPLE_DIR}", f"data.reader.cache_dir={cache_dir}", "aug=standard"],
        tmp_path,
    )
    dm = build_datamodule(cfg)  # the default 2 loader workers
    dm.setup()
    return dm


def test_cached_folder_gives_bit_identical_batches_and_is_decoded_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    in_memory, mapped = datamodule(tmp_path, "null"), datamodule(tmp_path, cache)
    assert isinstance(mapped.data.images, np.memmap) and not isinstance(in_memory.data.images, np.memmap)
    assert np.array_equal(in_memory.data.labels, mapped.data.labels) and in_memory.data.sources == mapped.data.sources
    for split in ("train_dataloader", "val_dataloader"):
        a, b = next(iter(getattr(in_memory, split)())), next(iter(getattr(mapped, split)()))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    (npy,) = cache.glob("images-*.npy")
    assert npy.stat().st_size >= len(mapped.data) * 96 * 96 * 3

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(readers, "load_image", no_decoding)
    monkeypatch.setattr(image_cache, "load_image", no_decoding)
    again = datamodule(tmp_path, cache)  # a later run maps the same file
    assert np.array_equal(np.asarray(again.data.images), np.asarray(mapped.data.images))


def test_cleaning_a_mapped_set_keeps_it_mapped_and_splits_as_in_memory(tmp_path):
    from shutil import copy, copytree

    root = copytree(SAMPLE_DIR, tmp_path / "tree")
    original = sorted((root / "basophil").iterdir())[0]
    copy(original, original.with_name("copy_" + original.name))  # an exact duplicate to remove

    def cleaned(cache_dir):
        overrides = ["data=folder", f"data.reader.root={root}", f"data.reader.cache_dir={cache_dir}", "data.clean=true"]
        dm = build_datamodule(compose_config("train", overrides, tmp_path))
        dm.setup()
        return dm

    in_memory, mapped = cleaned("null"), cleaned(tmp_path / "cache")
    assert isinstance(mapped.data.images, np.memmap)  # cleaning indexes the map, never copies it
    assert len(mapped.splits["all"]) < len(mapped.data)  # the duplicate was removed
    for split in ("train", "val", "test", "all"):
        assert np.array_equal(in_memory.splits[split], mapped.splits[split])


def test_a_changed_file_builds_a_new_cache(tmp_path):
    from shutil import copytree

    root = copytree(SAMPLE_DIR, tmp_path / "tree")
    cache = tmp_path / "cache"
    image_cache.cached_folder(root, readers.CLASS_NAMES, 96, cache)
    victim = next((root / "basophil").iterdir())
    os.utime(victim, ns=(0, 0))
    image_cache.cached_folder(root, readers.CLASS_NAMES, 96, cache)
    assert len(list(cache.glob("images-*.npy"))) == 2


LIMIT_GB, DATA_GB = 2.25, 2.5  # importing torch + lightning alone maps ~1.2 GB of data


def train_under_memory_limit(tmp_path, mmap: bool) -> subprocess.CompletedProcess:
    limit = int(LIMIT_GB * 2**30)
    cmd = [
        sys.executable,
        "-m",
        "bloodcells.train",
        "model=tiny",
        "data=npy",
        f"data.reader.images={tmp_path / 'images.npy'}",
        f"data.reader.labels={tmp_path / 'labels.npy'}",
        f"data.reader.mmap={str(mmap).lower()}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "test=false",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={tmp_path / 'out'}",
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)),
        timeout=600,
    )


@pytest.mark.slow
def test_a_dataset_larger_than_the_memory_limit_trains_from_the_memory_map(tmp_path):
    n = int(DATA_GB * 2**30) // (96 * 96 * 3)
    images = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 96, 96, 3))
    for start in range(0, n, 8192):
        images[start : start + 8192] = (start // 8192) * 7 % 256
    images.flush()
    del images
    np.save(tmp_path / "labels.npy", np.arange(n) % 8)

    mapped = train_under_memory_limit(tmp_path, mmap=True)
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    assert "`max_epochs=1` reached" in mapped.stderr and list((tmp_path / "out").rglob("*.ckpt"))
    in_memory = train_under_memory_limit(tmp_path, mmap=False)  # the limit does bind
    assert in_memory.returncode == 2 and "do not fit in memory; keep data.reader.mmap=true" in in_memory.stderr
