"""Augmentations keep shape/dtype/range, are seeded, are the identity at magnitude 0, and
every aug config instantiates without albumentations warnings (ignored args fail here)."""

from __future__ import annotations

import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate

from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.data.augment import OPS, AugMix, GridMask, RandAugment
from bloodcells.data.transforms import build_pipeline
from tests.helpers import compose_config

MAGNITUDE_OPS = [o for o in OPS if o not in ("autocontrast", "equalize")]
AUG_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "aug").glob("*.yaml"))


@pytest.fixture
def image(rng):
    return rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)


def run(transform, image, seed=0):
    return A.Compose([transform], seed=seed)(image=image)["image"]


@pytest.mark.parametrize(
    "transform",
    [
        RandAugment(num_ops=3, magnitude=9, magnitude_std=1.0),
        AugMix(),
        GridMask(p=1.0, max_rotate=45),
        RandAugment(ops=["solarize", "posterize", "rotate"]),
        AugMix(ops=["equalize", "autocontrast", "shear_x"]),
    ],
    ids=["randaug", "augmix", "gridmask", "randaug-few-ops", "augmix-few-ops"],
)
def test_transform_keeps_shape_dtype_range_and_is_seeded(transform, image):
    out = run(transform, image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(out, run(transform, image))
    outs = {run(transform, image, seed).tobytes() for seed in range(5)}
    assert len(outs) > 1


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_keeps_shape_and_dtype(op, image):
    out = run(RandAugment(num_ops=1, magnitude=10, ops=[op]), image)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_identity_at_magnitude_zero(image):
    assert np.array_equal(run(RandAugment(num_ops=4, magnitude=0, ops=MAGNITUDE_OPS), image), image)
    assert np.array_equal(run(AugMix(severity=0, ops=MAGNITUDE_OPS), image), image)
    assert np.array_equal(run(GridMask(keep_ratio=1.0, p=1.0), image), image)


def test_gridmask_keeps_the_configured_fraction(image):
    masked = [
        run(GridMask(unit_range=(24, 24), keep_ratio=0.75, fill=0, p=1.0), np.full_like(image, 255), s)
        for s in range(20)
    ]
    kept = np.mean([(m > 0).all(axis=2).mean() for m in masked])
    assert kept == pytest.approx(0.75, abs=0.05)


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation ops"):
        RandAugment(ops=["rotate", "warp"])


@pytest.mark.parametrize("name", AUG_CONFIGS)
def test_aug_config_builds_without_warnings_and_runs(name, image, tmp_path):
    cfg = compose_config("train", [f"aug={name}"], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warns (only) on ignored or deprecated args
        pipeline = build_pipeline(instantiate(cfg.aug.train), 96)
        pipeline.set_random_seed(0)
        for _ in range(5):
            out = pipeline(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8


def test_a_misspelt_argument_is_caught():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="max_holes"):
            A.CoarseDropout(max_holes=8)


def test_preview_writes_a_grid(tmp_path):
    from PIL import Image

    from bloodcells.runs.preview import preview

    cfg = compose_config("preview", ["aug=randaug", "n=3"], tmp_path)
    out = preview(cfg)
    assert Image.open(out).size == (140 * 4, 150 * 8)  # 1 original + 3 augmented columns, 8 class rows
