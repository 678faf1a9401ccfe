"""Which checkpoint a run resumes from, and whether it fits this run.

``ckpt_path=last`` picks the newest ``last.ckpt`` among this task's earlier runs whose
model (backbone, head, input size), classes and data source equal this run's; a checkpoint
of another dataset or model is never resumed by accident. An explicit ``ckpt_path`` gets the
same check, so a mismatch ends with one line naming what differs, not a state-dict traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bloodcells.core.errors import CheckpointError
from bloodcells.data.datamodule import DATA_RECORD, canonical_source, data_source
from bloodcells.inference.checkpoints import safe_load
from bloodcells.runs.build import build_reader

log = logging.getLogger(__name__)


def run_fingerprint(cfg: DictConfig) -> dict:
    """What a resumed checkpoint must share with this run."""
    return {
        "model.backbone": cfg.model.backbone,
        "model.head": OmegaConf.to_container(cfg.model.head, resolve=True),
        "class_names": list(cfg.class_names),
        "data.image_size": cfg.data.image_size,
        "data source": data_source(build_reader(cfg)),
    }


def checkpoint_fingerprint(checkpoint: dict) -> dict:
    hp = checkpoint["hyper_parameters"]
    return {
        "model.backbone": hp.get("backbone"),
        "model.head": hp.get("head"),
        "class_names": list(hp.get("class_names", [])),
        "data.image_size": hp.get("image_size"),
        "data source": canonical_source(checkpoint.get(DATA_RECORD, {}).get("source")),
    }


def differences(run: dict, ckpt: dict) -> list[str]:
    return [f"{k}: checkpoint {ckpt[k]!r}, this run {run[k]!r}" for k in run if run[k] != ckpt[k]]


def own_last_checkpoint(cfg: DictConfig, fingerprint: dict) -> str | None:
    """This run dir's own ``last.ckpt``: a job requeued by SLURM/submitit, or a killed sweep
    re-run into the same dir, continues where it stopped (``resume_in_place=false``: start over)."""
    own = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not cfg.get("resume_in_place", True) or not own.is_file():
        return None
    diff = differences(fingerprint, checkpoint_fingerprint(safe_load(own)))
    if diff:
        raise CheckpointError(
            f"{own}: this run dir holds a last.ckpt of another run ({'; '.join(diff)}); "
            "use a fresh run dir or pass resume_in_place=false"
        )
    log.info("resuming this run dir's own %s (requeued or re-run job)", own)
    return str(own)


def resolve_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (``None``: start fresh); checked against this run."""
    ckpt = cfg.get("ckpt_path")
    fingerprint = run_fingerprint(cfg)
    if ckpt is None:
        return own_last_checkpoint(cfg, fingerprint)
    if ckpt != "last":
        diff = differences(fingerprint, checkpoint_fingerprint(safe_load(ckpt)))
        if diff:
            raise CheckpointError(f"{ckpt}: does not fit this run; " + "; ".join(diff))
        return str(ckpt)
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise CheckpointError(f"ckpt_path=last: no {runs}/*/checkpoints/last.ckpt to resume from")
    first_diff = None
    for path in candidates:
        try:
            diff = differences(fingerprint, checkpoint_fingerprint(safe_load(path)))
        except CheckpointError as err:
            if "refused" in str(err):  # a tampered file among this task's runs: the user must know
                raise
            log.warning("ckpt_path=last: skipping %s", err)  # e.g. truncated by a killed job
            continue
        if not diff:
            log.info("resuming from %s", path)
            return str(path)
        first_diff = first_diff or f"{path}: " + "; ".join(diff)
    raise CheckpointError(
        f"ckpt_path=last: none of the {len(candidates)} last.ckpt under {runs} fits this run "
        f"(newest differs in {first_diff}); pass ckpt_path=FILE or start a fresh run"
    )
