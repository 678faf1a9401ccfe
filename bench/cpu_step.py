"""Which CPU settings pay for the training step: layout, bf16, torch.compile, batch size.

The bare step (lite0 with the offline weights, AdamW, flips/rot90 on the batch tensor,
images already in memory) in one process per variant, timed over ``--steps`` steps after 3
warm-up steps; the baseline is the first variant (NCHW fp32, batch 64), run in the same
invocation. ``compile`` includes no compile time (warm-up absorbs it; it is reported).

    python bench/cpu_step.py [--variants nchw cl bf16 cl_bf16 cl_bf16_dw32 cl_compile] [--steps 15]
        [--size 96]

``dw32``: bf16 autocast with the depthwise convolutions kept in float32, as the framework
runs ``trainer.precision=bf16-mixed`` on CPU (``bloodcells.models.cpu_precision``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import emit, pbc96_cache

from bloodcells.models.backbones import create_backbone
from bloodcells.models.cpu_precision import keep_depthwise_float32


def one_variant(name: str, batch: int, steps: int, size: int) -> dict:
    torch.manual_seed(0)
    tokens = name.split("_")
    backbone = create_backbone("tf_efficientnet_lite0", True, "offline:lite0", 0.2)
    if "dw32" in tokens:
        keep_depthwise_float32(backbone)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 8))
    channels_last = "cl" in tokens
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    step_model = torch.compile(model) if "compile" in name else model
    data = np.load(pbc96_cache())
    images = torch.from_numpy(data["images"][:4096]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data["labels"][:4096]).long()

    def step() -> None:
        idx = torch.randint(0, len(images), (batch,))
        x = (images[idx].float() - 127.5) / 127.5
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=False)
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        x = torch.rot90(x, int(torch.randint(0, 4, ())), (2, 3))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in name):
            loss = F.cross_entropy(step_model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):
        step()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {
        "variant": name,
        "batch": batch,
        "size": size,
        "img_s": round(steps * batch / (time.perf_counter() - start), 1),
        "warmup_s": round(warmup_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=["nchw", "cl", "bf16", "cl_bf16", "cl_compile"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--size", type=int, default=96, help="input pixels (pbc96's cells resized)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one variant, fresh allocator and compile caches
        name, batch = args.one.split(":")
        print(json.dumps(one_variant(name, int(batch), args.steps, args.size)))
        return
    rows = []
    for batch in args.batches:
        for name in args.variants:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{name}:{batch}",
                    "--steps",
                    str(args.steps),
                    "--size",
                    str(args.size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["vs_first"] = round(row["img_s"] / (rows[0]["img_s"] if rows else row["img_s"]), 2)
            print(row, flush=True)
            rows.append(row)
    emit(
        {
            "bench": "cpu_step",
            "threads": torch.get_num_threads(),
            "size": args.size,
            "results": rows,
        }
    )


if __name__ == "__main__":
    main()
