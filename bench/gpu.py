"""Training throughput on GPUs: images/s of the framework's model (lite0 by default) for
fp32 / 16-mixed / bf16-mixed x NCHW / channels_last x eager / torch.compile on one GPU, then
``python -m bloodcells.train`` itself on one GPU and under DDP over every visible GPU
(bf16-mixed, random cells in an npz). The step batches are the bundled sample's cells in
device memory, so the GPU is measured, not the loader. Baseline in the same run: fp32 NCHW eager (ratios). Prints one
JSON line; on a machine without CUDA it says so and exits 0.

    python bench/gpu.py [--size 128] [--batch 256] [--steps 50] [--model lite0] [--device cuda]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from common import compose_train, emit

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.readers import read_folder
from bloodcells.data.resize import resize_images
from bloodcells.runs.build import build_model

PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def step_rate(model, images, labels, dtype, channels_last: bool, compiled: bool, steps: int, warmup: int) -> dict:
    """Images/s of forward + backward + AdamW steps, and the compile (first steps) time."""
    device = images.device
    model = model.to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    forward = torch.compile(model) if compiled else model
    x = images.contiguous(memory_format=fmt)

    def one_step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    start = time.perf_counter()
    for _ in range(warmup):
        one_step()
    sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return {"img_s": round(steps * len(x) / (time.perf_counter() - start), 1), "warmup_s": round(warm_s, 2)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_npz(folder: Path, n: int = 16384) -> Path:
    """Random cells (throughput only): enough images that an epoch is seconds, not start-up."""
    rng = np.random.default_rng(0)
    path = folder / "synthetic.npz"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), labels=rng.integers(0, 8, (n, 1)))
    return path


STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*epoch (\d+)/")


def cli_rate(devices: int, size: int, data: Path, epochs: int, run_dir: Path) -> float:
    """Images/s of ``python -m bloodcells.train`` (bf16-mixed, DDP over ``devices`` GPUs):
    training images per second between the first and the last epoch line (start-up, the first
    epoch and its compile excluded; validation included)."""
    cmd = [
        sys.executable, "-m", "bloodcells.train", "trainer.accelerator=gpu", f"trainer.devices={devices}",
        "trainer.precision=bf16-mixed", f"data.image_size={size}", "data=npz", f"data.reader.path={data}",
        f"trainer.max_epochs={epochs}", "callbacks.tta_ensemble=null", "callbacks.time_budget=null",
        "trainer.enable_progress_bar=false", f"paths.log_dir={run_dir}", "data.num_workers=6",
    ]  # fmt: skip
    if devices > 1:
        cmd.append("trainer.strategy=ddp")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-3000:])
    (log,) = run_dir.rglob("train.log")
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in STAMP.finditer(log.read_text())]
    seconds = (stamps[-1] - stamps[0]).total_seconds()
    train_images = int(0.7 * len(np.load(data)["labels"]))  # the default split's training share
    return round(train_images * (len(stamps) - 1) / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--model", default="lite0")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI and DDP part")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit({"bench": "gpu", "skipped": "no CUDA GPU visible"})
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = Path(tempfile.mkdtemp())
    cfg = compose_train([f"model={args.model}", f"data.image_size={args.size}"], run_dir)
    cells = read_folder(PROJECT_ROOT / "data" / "sample")
    pick = np.arange(args.batch) % len(cells)
    x = torch.from_numpy(np.ascontiguousarray(cells.images[pick])).permute(0, 3, 1, 2).to(device)
    x = resize_images(x, args.size).float()
    y = torch.from_numpy(cells.labels[pick]).long().to(device)
    rows = []
    for precision, channels_last, compiled in itertools.product(PRECISIONS, (False, True), (False, True)):
        if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        torch.manual_seed(0)
        model = build_model(cfg)
        model.apply_freezing(10**6)  # every layer trains (the unfrozen stage)
        rate = step_rate(model, x, y, PRECISIONS[precision], channels_last, compiled, args.steps, args.warmup)
        rows.append({"precision": precision, "channels_last": channels_last, "compile": compiled, **rate})
        print(rows[-1], flush=True)
    base = rows[0]["img_s"]
    for r in rows:
        r["x_fp32_nchw_eager"] = round(r["img_s"] / base, 2)
    result = {
        "bench": "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
        "model": cfg.model.backbone,
        "size": args.size,
        "batch": args.batch,
        "torch": torch.__version__,
        "steps": rows,
    }
    if device.type == "cuda" and not args.no_cli:
        gpus = torch.cuda.device_count()
        data = synthetic_npz(run_dir)
        one = cli_rate(1, args.size, data, 4, run_dir / "one")
        result["cli_one_gpu_img_s"] = one
        if gpus > 1:
            every = cli_rate(gpus, args.size, data, 4, run_dir / "ddp")
            result["cli_ddp_img_s"], result["ddp_scaling"] = every, round(every / one, 2)
    emit(result)


if __name__ == "__main__":
    main()
