"""Helpers shared by the tests: a tiny model as the tiny config builds it, checkpoints of it,
the CLI as a user runs it, and the one-line-error check."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from bloodcells.core.hydra import PROJECT_ROOT, compose_config
from bloodcells.data.datamodule import ImageArrayDataset
from bloodcells.data.transforms import build_pipeline

SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"

__all__ = [
    "BLOCKER",
    "WritesAFile",
    "FAST_TRAIN",
    "PROJECT_ROOT",
    "SAMPLE_DIR",
    "assert_one_line_error",
    "calibrated_checkpoint",
    "compose_config",
    "loader_of",
    "run_cli",
    "run_submission",
    "run_train_cli",
    "sample_cells",
    "save_checkpoint",
    "tiny_classifier",
]


def tiny_classifier(image_size: int = 96, cls: type | None = None, **overrides):
    """A random-init ``test_efficientnet`` classifier as the tiny model config builds it."""
    from bloodcells.models.module import CellClassifier

    cfg = compose_config("train", ["model=tiny", f"data.image_size={image_size}"], "/tmp/unused")
    hparams = dict(
        backbone=cfg.model.backbone,
        head=dict(cfg.model.head),
        class_names=list(cfg.class_names),
        image_size=image_size,
        optim=dict(cfg.optim),
        sched=dict(cfg.sched),
        loss=dict(cfg.loss),
        finetune=OmegaConf.to_container(cfg.finetune),
        pretrained=False,
        weights=None,
    )
    hparams.update(overrides)
    return (cls or CellClassifier)(**hparams).eval()


def sample_cells() -> tuple[np.ndarray, np.ndarray]:
    """Every fifth image of the bundled sample and its class index."""
    from PIL import Image

    files = sorted(SAMPLE_DIR.rglob("*.jpg"))[::5]
    classes = sorted({f.parent.name for f in sorted(SAMPLE_DIR.rglob("*.jpg"))})
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return images, np.array([classes.index(f.parent.name) for f in files])


def calibrated_checkpoint(path: Path):
    """A tiny model saved at ``path`` with a Mahalanobis + image-statistics foreign-image score
    fitted on sample cells and stored (random) validation probabilities for conformal sets;
    returns the path and those probabilities."""
    import torch

    from bloodcells.inference.checkpoints import write_calibration
    from bloodcells.inference.ood import fitted_scorer, look, mahalanobis_arrays, pixel_arrays
    from bloodcells.inference.tta import NO_TTA
    from bloodcells.models.ood import OODScorer

    torch.manual_seed(0)
    cells, labels = sample_cells()
    model = tiny_classifier()
    save_checkpoint(model, path)
    fit = look(model, loader_of(cells[::2], labels[::2], 32))
    val = look(model, loader_of(cells[1::2], labels[1::2], 32))
    arrays = {**mahalanobis_arrays(fit.feats, fit.labels, 8), **pixel_arrays(fit.stats)}
    scorer = fitted_scorer("mahalanobis", arrays, val, pixels=True)
    scorer = OODScorer(scorer.method, scorer.threshold, dict(scorer.named_buffers()), scorer.k, scorer.pixels)
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(400, 8, generator=g) * 2).softmax(1)
    calibration = {
        "tta": NO_TTA.to_dict(),
        "temperatures": {NO_TTA.key: 1.0},
        "conformal": {NO_TTA.key: {"probs": probs, "targets": probs.argmax(1)}},
    }
    write_calibration(path, calibration, scorer)
    return path, probs


def save_checkpoint(model, path: Path) -> Path:
    """A checkpoint with what ``load_classifier`` reads (weights and hyperparameters)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def run_train_cli(*overrides: str, log_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m bloodcells.train`` with a tiny model, as a user runs it, outputs under ``log_dir``."""
    flags = [o for o in overrides if o.startswith("-")]  # Hydra flags (e.g. -m) go before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "bloodcells.train", *flags, *FAST_TRAIN, *rest, f"paths.log_dir={log_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


FAST_TRAIN = [
    "model=tiny",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def run_cli(module: str, *args: str, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", f"bloodcells.{module}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=timeout, **popen)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("bloodcells: error:"))
    for fragment in fragments:
        assert fragment in line, line


def loader_of(images: np.ndarray, labels: np.ndarray, batch_size: int) -> DataLoader:
    dataset = ImageArrayDataset(images, labels, np.arange(len(images)), build_pipeline([]))
    return DataLoader(dataset, batch_size=batch_size)


BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "bloodcells", "timm", "lightning"):
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from model import Model
    X = np.load(sys.argv[2])
    preds = Model().predict(X)
    np.save(sys.argv[3], preds)
    assert "torch" not in sys.modules and "bloodcells" not in sys.modules
    """
)


def run_submission(folder: Path, images: np.ndarray, work: Path) -> np.ndarray:
    """The exported submission's ``Model().predict(images)`` in a fresh interpreter that cannot
    import torch or bloodcells (``BLOCKER``); its class indices."""
    np.save(work / "X.npy", images)
    script = work / "run.py"
    script.write_text(BLOCKER)
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(work / "X.npy"), str(work / "preds.npy")],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(work / "preds.npy")


class WritesAFile:
    """Unpickling this calls ``open(marker, "w")``: code running, as in a crafted file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def fit_with(cfg, *callbacks):
    """Build the config's datamodule, model and trainer like the CLI, add ``callbacks``, fit;
    the fitted model."""
    import lightning.pytorch as pl

    from bloodcells.runs.build import build_datamodule, build_model, build_trainer

    pl.seed_everything(cfg.seed, workers=True)
    datamodule, model = build_datamodule(cfg), build_model(cfg)
    trainer = build_trainer(cfg)
    trainer.callbacks.extend(callbacks)
    trainer.fit(model, datamodule=datamodule)
    return model
