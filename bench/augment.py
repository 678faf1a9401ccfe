"""Images/s of every augmentation pipeline on one worker at 96x96, next to lite0's training
images/s measured in the same run: with 2 workers a pipeline is a bottleneck only if
2 x its rate falls below the training rate.

    python bench/augment.py [--images 400] [--train-steps 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import compose_train, emit
from hydra.utils import instantiate

from bloodcells.core.hydra import CONFIG_DIR, PROJECT_ROOT
from bloodcells.data.readers import read_folder
from bloodcells.data.transforms import build_pipeline, to_tensor
from bloodcells.runs.build import build_model


def pipeline_rate(name: str, images, run_dir: Path) -> float:
    cfg = compose_train([f"aug={name}"], run_dir)
    pipeline = build_pipeline(instantiate(cfg.aug.train), 96)
    pipeline.set_random_seed(0)
    start = time.perf_counter()
    for i, image in enumerate(images):
        pipeline.set_random_seed(i)  # as EpochSampler-driven loading does, per sample
        to_tensor(pipeline(image=image)["image"])
    return len(images) / (time.perf_counter() - start)


def train_rate(run_dir: Path, images, steps: int, batch: int = 32) -> float:
    cfg = compose_train(["model=lite0", "finetune=full"], run_dir)
    model = build_model(cfg).train()
    model.apply_freezing(0)
    optimizer = model.build_optimizer()
    x = torch.from_numpy(images[:batch]).permute(0, 3, 1, 2).contiguous()
    y = torch.arange(batch) % 8
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = read_folder(PROJECT_ROOT / "data" / "sample").images[: args.images]
    run_dir = Path(tempfile.mkdtemp())
    training = train_rate(run_dir, images, args.train_steps)
    print(f"lite0 training step: {training:.1f} img/s (2 threads, batch 32)")
    rates = {}
    for name in sorted(p.stem for p in (Path(CONFIG_DIR) / "aug").glob("*.yaml")):
        torch.set_num_threads(1)
        rates[name] = round(pipeline_rate(name, images, run_dir), 1)
        print(
            f"aug={name}: {rates[name]} img/s on one worker; 2 workers / training = {2 * rates[name] / training:.1f}x"
        )
    emit(
        {
            "bench": "augment",
            "train_img_s": round(training, 1),
            "pipeline_img_s": rates,
            "slowest_2_workers_over_training": round(2 * min(rates.values()) / training, 2),
        }
    )


if __name__ == "__main__":
    main()
