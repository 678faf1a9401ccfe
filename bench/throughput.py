"""Training images/s on pbc96: the framework's default training step against two plain loops.

Baselines, timed in the same run, alternately, over the same number of steps after a warmup:
- ``plain_loader``: a bare PyTorch loop over the framework's own data loader (same augmentation,
  workers, batch, optimizer): what Lightning and the module add on top of the arithmetic;
- ``plain_tensor``: the loop users write by hand (issue 10): lite0 with the offline weights,
  contiguous (NCHW) layout, AdamW 1e-3 with one-cycle, random flips and 90-degree rotations
  applied to the batch tensor, images already in memory, no loader workers.
The framework runs through ``bloodcells.train``'s own config (any overrides after ``--``),
with validation off so only training steps are timed. Ratio = framework / baseline.

    python bench/throughput.py [--steps 30] [--rounds 2] [-- model.channels_last=false]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from common import compose_train, emit, pbc96_cache

from bloodcells.models.backbones import create_backbone
from bloodcells.runs.build import build_datamodule, build_model


class StepTimer(pl.Callback):
    """Wall time of training steps ``warmup`` .. ``warmup + steps``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.seen = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        self.end = time.perf_counter()


def infinite(loader):
    while True:
        yield from loader


def plain_loader_loop(model, loader, warmup: int, steps: int) -> float:
    """The framework's model, loader and optimizer in a bare loop (no Lightning)."""
    model.train()
    model.apply_freezing(0)
    optimizer = model.build_optimizer()
    batches = infinite(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        images, targets, _ = next(batches)
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def plain_tensor_loop(images: torch.Tensor, labels: torch.Tensor, batch: int, warmup: int, steps: int) -> float:
    """The hand-written loop of issue 10: augmentation on the batch tensor, one-cycle AdamW."""
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", True, "offline:lite0", 0.2)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 8)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    total = warmup + steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=total)
    order = torch.randperm(len(images))
    for i in range(total):
        if i == warmup:
            start = time.perf_counter()
        idx = order[(i * batch) % (len(images) - batch) :][:batch]
        x = (images[idx].float() - 127.5) / 127.5
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        x = torch.rot90(x, int(torch.randint(0, 4, ())), (2, 3))
        loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def framework_loop(model, datamodule, cfg, warmup: int, steps: int, run_dir: Path) -> float:
    """The configured trainer (precision, etc.) with validation, checkpoints and logs off."""
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=run_dir,
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.end - timer.start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="framework config overrides (after --)")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp())
    cfg = compose_train(["data=npz", f"data.reader.path={pbc96_cache()}", *args.overrides], run_dir)
    batch = cfg.data.batch_size
    pl.seed_everything(0)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    train_index = datamodule.splits["train"]
    images = torch.from_numpy(np.ascontiguousarray(datamodule.data.images[train_index].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(datamodule.data.labels[train_index]).long()
    initial = build_model(cfg)
    n = batch * args.steps
    rates: dict[str, list[float]] = {"plain_tensor": [], "plain_loader": [], "framework": []}
    for _ in range(args.rounds):
        rates["plain_tensor"].append(n / plain_tensor_loop(images, labels, batch, args.warmup, args.steps))
        model = copy.deepcopy(initial)
        rates["plain_loader"].append(
            n / plain_loader_loop(model, datamodule.train_dataloader(), args.warmup, args.steps)
        )
        model = copy.deepcopy(initial)
        rates["framework"].append(n / framework_loop(model, datamodule, cfg, args.warmup, args.steps, run_dir))
        print("round: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()), flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    emit(
        {
            "bench": "throughput",
            "overrides": args.overrides,
            "batch_size": batch,
            "num_workers": cfg.data.num_workers,
            "threads": torch.get_num_threads(),
            **{f"{k}_img_s": round(v, 1) for k, v in median.items()},
            "ratio_vs_plain_tensor": round(median["framework"] / median["plain_tensor"], 3),
            "ratio_vs_plain_loader": round(median["framework"] / median["plain_loader"], 3),
        }
    )


if __name__ == "__main__":
    main()
