"""Show a trained model on a local page: ``python -m bloodcells.serve ckpt_path=... [port=8000]``.

The checkpoint or ensemble file loads as ``predict`` loads it (stored TTA, temperature,
conformal calibration, foreign-image score); the page's CSV for a set of images is
``predict``'s for the same files. Stops on Ctrl-C.
"""

from __future__ import annotations

import threading

from omegaconf import DictConfig, OmegaConf

from bloodcells.core.errors import ConfigError, check_positive
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.predictor import resolve_device
from bloodcells.runs.evaluate import configured_tta
from bloodcells.serving.served_model import Limits, ServedModel
from bloodcells.serving.server import PageServer, make_server


def build_server(cfg: DictConfig) -> PageServer:
    check_positive("batch_size", cfg.batch_size)
    limits = Limits(**OmegaConf.to_container(cfg.limits))
    for name, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"limits.{name}={value!r} must be a positive number")
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port!r} must be an integer from 0 (any free port) to 65535")
    device = resolve_device(cfg.get("device", "auto"))
    predictor = load_predictor(cfg.ckpt_path, configured_tta(cfg), device)
    served = ServedModel(
        predictor, cfg.ckpt_path, cfg.conformal, cfg.batch_size, cfg.backend, device, bool(cfg.gradcam)
    )
    try:
        return make_server(served, str(cfg.host), int(cfg.port), limits)
    except OSError as err:
        raise ConfigError(f"cannot serve on {cfg.host}:{cfg.port} ({err.strerror}); choose another port=...") from None


def serve(cfg: DictConfig) -> None:
    """Requests are answered in threads; the model's work runs on this (the main) thread."""
    server = build_server(cfg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving {cfg.ckpt_path} at {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.served.run_jobs_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.shutdown()
        server.server_close()
