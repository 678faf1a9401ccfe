"""Training images/s: the framework's training step against a plain PyTorch loop.

Same model (lite0, same initial weights), batch, data loader, optimizer and threads; the
two are timed alternately, several rounds, over the same number of steps after a warmup.
Ratio = framework images/s / plain-loop images/s (1.0 = no overhead).

    python bench/throughput.py [--steps 20] [--rounds 3] [--model lite0]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from common import compose_train, emit

from bloodcells.instantiate import build_datamodule, build_model


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


def plain_loop(model, loader, warmup: int, steps: int) -> float:
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


def framework_loop(model, datamodule, warmup: int, steps: int, run_dir: Path) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
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
    parser.add_argument("--model", default="lite0")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp())
    cfg = compose_train(
        [
            f"model={args.model}",
            "finetune=full",
            "aug=none",
            f"data.batch_size={args.batch_size}",
            "data.num_workers=0",
            "sched=cosine",
            "trainer.max_epochs=1000",
        ],
        run_dir,
    )
    pl.seed_everything(0)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    initial = build_model(cfg)
    images = args.batch_size * args.steps
    plain, framework = [], []
    for _ in range(args.rounds):
        t = plain_loop(copy.deepcopy(initial), datamodule.train_dataloader(), args.warmup, args.steps)
        plain.append(images / t)
        framework.append(images / framework_loop(copy.deepcopy(initial), datamodule, args.warmup, args.steps, run_dir))
        print(f"round: plain {plain[-1]:.1f} img/s, framework {framework[-1]:.1f} img/s", flush=True)
    ratios = [f / p for f, p in zip(framework, plain)]
    emit(
        {
            "bench": "throughput",
            "model": args.model,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "plain_img_s": round(statistics.median(plain), 1),
            "framework_img_s": round(statistics.median(framework), 1),
            "ratio": round(statistics.median(ratios), 3),
        }
    )


if __name__ == "__main__":
    main()
