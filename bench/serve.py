"""Latency of the served page: 200 bundled images, one request each (as a user dropping one
cell at a time), median and 95th percentile, with and without dihedral TTA, Grad-CAM on.
Baseline in the same run: the same scoring called directly (no HTTP, no multipart, no
JSON), so the ratio is what serving adds.

    python bench/serve.py [--n 200] [--ckpt CKPT]   (default: lite0 at 96 px, ImageNet weights)
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    import http.client

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
            server = build_server(cfg)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            served = server.served
            direct, http = [], []
            for f in files[:5]:  # warm-up: first calls allocate
                served.score(decode_uploads([Upload(f.name, f.read_bytes())], served.predictor.image_size, 10**8))
            for f in files:
                start = time.perf_counter()
                decoded = decode_uploads([Upload(f.name, f.read_bytes())], served.predictor.image_size, 10**8)
                served.score(decoded)
                direct.append(1000 * (time.perf_counter() - start))
            conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
            for f in files:
                data = f.read_bytes()
                start = time.perf_counter()
                assert post(conn, data, f.name) == 200
                http.append(1000 * (time.perf_counter() - start))
            conn.close()
            server.shutdown()
            server.server_close()
            row = {"tta": tta, "n": len(files), "direct": percentiles(direct), "served": percentiles(http)}
            row["overhead_x"] = round(row["served"]["median_ms"] / row["direct"]["median_ms"], 2)
            rows.append(row)
            print(row, flush=True)
    emit({"bench": "serve", "rows": rows})


if __name__ == "__main__":
    main()
