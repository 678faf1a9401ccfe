"""Build the run's objects from a composed config (shared by train and evaluate)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from bloodcells.core.hydra import instantiate, require_values
from bloodcells.data.datamodule import BloodCellDataModule
from bloodcells.inference.checkpoints import AtomicCheckpointIO
from bloodcells.models.module import CellClassifier


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def build_datamodule(cfg: DictConfig) -> BloodCellDataModule:
    require_values(cfg.data)
    return instantiate(OmegaConf.to_container(cfg.data, resolve=True))


def build_reader(cfg: DictConfig):
    """The data config's reader (a partial that takes ``class_names``)."""
    require_values(cfg.data.reader)
    return instantiate(cfg.data.reader)


def build_model(cfg: DictConfig) -> CellClassifier:
    """The model config plus the parts it needs from other groups, as plain hparams."""
    return instantiate(
        cfg.model,
        class_names=list(cfg.class_names),
        image_size=cfg.data.image_size,
        optim=plain(cfg.optim),
        sched=plain(cfg.sched),
        loss=plain(cfg.loss),
        finetune=plain(cfg.finetune),
        mix=plain(cfg.mix),
        head=plain(cfg.model.head),
        _recursive_=False,
        _convert_="all",
    )


def build_trainer(cfg: DictConfig, **overrides) -> pl.Trainer:
    """The trainer with the configured callbacks and loggers; checkpoints are written atomically."""
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    overrides.setdefault("plugins", plugins)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)
