"""Latency of the served page: 200 bundled images, one request each (as a user dropping one
cell at a time) to ``python -m bloodcells.serve``, median and 95th percentile, with and without
dihedral TTA, Grad-CAM on. Baseline in the same run: the same scoring called directly on the
main thread (no HTTP, no multipart, no JSON), so the ratio is what serving adds; and the same
server with the model run in the request threads, which is why ``serve`` does not do that.

    python bench/serve.py [--n 200] [--ckpt CKPT]   (default: lite0 at 96 px, ImageNet weights)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from common import emit

from bloodcells.core.hydra import PROJECT_ROOT, compose_config
from bloodcells.runs.build import build_model
from bloodcells.runs.serve import build_server
from bloodcells.serving.uploads import Upload, decode_uploads


def post(conn, data: bytes, name: str) -> int:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn.request("POST", "/api/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    response.read()
    return response.status


def percentiles(ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(ms)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def latencies(host: str, port: int, files: list[Path]) -> list[float]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=60)
    for f in files[:5]:  # warm-up: first calls allocate
        assert post(conn, f.read_bytes(), f.name) == 200
    out = []
    for f in files:
        data = f.read_bytes()
        start = time.perf_counter()
        assert post(conn, data, f.name) == 200
        out.append(1000 * (time.perf_counter() - start))
    conn.close()
    return out


def command_server(ckpt: Path, tta: str, run_dir: Path) -> tuple[subprocess.Popen, int]:
    """``python -m bloodcells.serve`` as a user starts it; its port."""
    cmd = [sys.executable, "-m", "bloodcells.serve", f"ckpt_path={ckpt}", "port=0", "backend=torch", f"tta={tta}",
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server did not start")
        found = re.search(r"http://[^:]+:(\d+)/", line)
        if found:
            return proc, int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--ckpt", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    files = sorted((PROJECT_ROOT / "data" / "sample").rglob("*.jpg"))
    files = [files[i] for i in np.linspace(0, len(files) - 1, args.n).astype(int)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            built = build_model(compose_config("train", [], tmp))
            ckpt = Path(tmp) / "lite0.ckpt"
            torch.save({"state_dict": built.state_dict(), "hyper_parameters": dict(built.hparams)}, ckpt)
        for tta in ("none", "dihedral"):
            cfg = compose_config("serve", [f"ckpt_path={ckpt}", "port=0", "backend=torch", f"tta={tta}"], tmp)
            server = build_server(cfg)  # in this process: requests and model work in request threads
            threading.Thread(target=server.serve_forever, daemon=True).start()
            served = server.served
            direct = []
            for f in files[:5] + files:  # the first 5 warm up
                start = time.perf_counter()
                served.score(decode_uploads([Upload(f.name, f.read_bytes())], served.predictor.image_size, 10**8))
                direct.append(1000 * (time.perf_counter() - start))
            in_thread = latencies(*server.server_address[:2], files)
            server.shutdown()
            server.server_close()
            proc, port = command_server(ckpt, tta, Path(tmp) / f"serve-{tta}")
            try:
                command = latencies("127.0.0.1", port, files)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            row = {
                "tta": tta,
                "n": len(files),
                "direct_main_thread": percentiles(direct[5:]),
                "serve_command": percentiles(command),
                "model_in_request_thread": percentiles(in_thread),
            }
            row["serve_over_direct_x"] = round(
                row["serve_command"]["median_ms"] / row["direct_main_thread"]["median_ms"], 2
            )
            rows.append(row)
            print(row, flush=True)
    emit({"bench": "serve", "rows": rows})


if __name__ == "__main__":
    main()
