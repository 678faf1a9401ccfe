"""ONNX Runtime as the scoring backend: each member's graph (its TTA views, logits and
foreign-image score) is exported once and cached beside its checkpoint, keyed by the
weights' content and the TTA, then run by ONNX Runtime, which is several times faster than
eager PyTorch on CPU (BENCHMARKS.md). The images are resized by ``resize_images`` in torch
first, as on the torch backend, so both backends see the same pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bloodcells.core.errors import ConfigError, check_choice
from bloodcells.data.resize import resize_images
from bloodcells.inference.tta import TTA
from bloodcells.models.module import CellClassifier

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "auto")
EXPORT_PAYS = 2000
"""Image-views per member above which ``auto`` exports: the ~10 s export costs about what
torch needs for 700-1,000 views of lite0 at 96 px on 2 cores (BENCHMARKS.md), so smaller jobs
stay on torch."""


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device, views: int | None = None) -> str:
    """``auto``: ONNX Runtime on CPU when the export extra is installed and the job (``views``
    image-views per member, if known) is large enough to repay the export; torch otherwise."""
    check_choice("backend", name, BACKENDS)
    if name == "auto":
        large = views is None or views > EXPORT_PAYS
        return "onnxruntime" if device.type == "cpu" and large and ort_available() else "torch"
    if name == "onnxruntime":
        if not ort_available():
            raise ConfigError("backend=onnxruntime needs the export extra: pip install -e '.[export]'")
        if device.type != "cpu":
            raise ConfigError(f"backend=onnxruntime runs on the CPU; with device={device} use backend=torch")
    return name


class MemberGraph(nn.Module):
    """One member at its input size: N x 3 x S x S (0-255) -> every TTA view's logits
    (V x N x K) [, the identity view's foreign-image score (N)]."""

    def __init__(self, model: CellClassifier, tta: TTA) -> None:
        super().__init__()
        self.model, self.tta = model.eval(), tta

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, ood = self.model.view_scores(x, self.tta)
        return logits if ood is None else (logits, ood)


def graph_key(model: CellClassifier, tta: TTA) -> str:
    """The content of the weights (and foreign-image arrays), the TTA and the torch version."""
    digest = hashlib.sha256(f"{tta.key}|{torch.__version__}|{model.hparams.image_size}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def cache_dir(model: CellClassifier) -> Path:
    """``.onnx-cache`` beside the member's checkpoint when writable; weights that are not a
    file's (adapted, in training) or an unwritable folder: the system's temporary folder."""
    source = model.checkpoint_path
    if source is not None:
        folder = Path(source).parent / ".onnx-cache"
        try:
            folder.mkdir(exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    folder = Path(tempfile.gettempdir()) / "bloodcells-onnx"
    folder.mkdir(exist_ok=True)
    return folder


def export_member(model: CellClassifier, tta: TTA, path: Path) -> None:
    graph = MemberGraph(model, tta).cpu().eval()
    size = model.hparams.image_size
    x = torch.randint(0, 256, (2, 3, size, size)).float()
    outputs = ["logits", "ood"] if model.ood is not None else ["logits"]
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (x,), dynamo=True, input_names=["x"], output_names=outputs, dynamic_shapes=dims, verbose=False
        )
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx", delete=False) as tmp:
        program.save(tmp.name)
    os.replace(tmp.name, path)  # a concurrent reader never sees half a file


def member_session(model: CellClassifier, tta: TTA):
    """An ONNX Runtime session for ``model`` with ``tta``: exported on first use, then cached."""
    import onnxruntime as ort

    path = cache_dir(model) / f"{graph_key(model, tta)}.onnx"
    if not path.is_file():
        log.info("exporting %s (TTA %s) for ONNX Runtime -> %s", model.hparams.backbone, tta.key, path)
        export_member(model, tta, path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_view_logits(model: CellClassifier, loader: DataLoader, tta: TTA, step: int) -> dict:
    """What ``predictor.view_logits`` returns, computed by ONNX Runtime."""
    session = member_session(model, tta)
    names = [o.name for o in session.get_outputs()]
    size = model.hparams.image_size
    logits, ood, targets, index = [], [], [], []
    for images, y, idx in loader:
        x = resize_images(images, size).float()
        for part in x.split(step):
            out = session.run(names, {"x": np.ascontiguousarray(part.numpy())})
            logits.append(torch.from_numpy(out[0]))
            if len(out) > 1:
                ood.append(torch.from_numpy(out[1]))
        targets.append(y)
        index.append(idx)
    return {
        "logits": torch.cat(logits, dim=1),
        "ood": torch.cat(ood) if ood else None,
        "targets": torch.cat(targets),
        "index": torch.cat(index),
    }
