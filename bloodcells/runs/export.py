"""Export a checkpoint or ensemble file: ``python -m bloodcells.export ckpt_path=... format=onnx|pt2|submission``.

Every format takes uint8 N x H x W x 3 of any size and returns calibrated probabilities, with
dynamic batch, height and width; the resize (``bloodcells.data.resize``), the normalisation,
the TTA views and the ensemble members are inside the graph.
``onnx`` uses ``torch.onnx.export(dynamo=True)`` (timm's own exporter calls APIs that torch
removed); ``pt2`` is ``torch.export``; ``submission`` is a folder with ``model.onnx`` and a
``model.py`` whose ``Model().predict(X)`` returns class indices with numpy + onnxruntime only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig

from bloodcells.core.errors import ConfigError, check_choice
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_unlabelled
from bloodcells.inference.adapt import ADAPT_BATCH, TentSettings, adapted_predictor
from bloodcells.inference.deploy import DeployedPredictor
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.reporting.model_card import model_facts, run_metrics, write_model_card
from bloodcells.runs.evaluate import configured_tta

FORMATS = ("onnx", "pt2", "submission")
SUBMISSION_MODEL = Path(__file__).parents[1] / "inference" / "submission_model.py"


def example_input(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)


def dynamic_dims() -> dict:
    """Batch, height and width are free: the graph resizes any image to the model's size."""
    return {
        "images": {
            0: torch.export.Dim("batch", min=1, max=4096),
            1: torch.export.Dim("height", min=8, max=8192),
            2: torch.export.Dim("width", min=8, max=8192),
        }
    }


def export_onnx(module: DeployedPredictor, path: Path) -> Path:
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise ConfigError("format=onnx needs the export extra: pip install -e '.[export]'") from None
    x = example_input(module.image_size)
    outputs = ["probs", "ood_score"] if module.has_ood else ["probs"]
    program = torch.onnx.export(
        module, (x,), dynamo=True, input_names=["images"], output_names=outputs, dynamic_shapes=dynamic_dims()
    )
    program.save(str(path))
    return path


def export_pt2(module: DeployedPredictor, path: Path) -> Path:
    program = torch.export.export(module, (example_input(module.image_size),), dynamic_shapes=dynamic_dims())
    torch.export.save(program, str(path))
    return path


def export_submission(module: DeployedPredictor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(module, folder / "model.onnx")
    shutil.copy(SUBMISSION_MODEL, folder / "model.py")
    meta = {
        "class_names": module.class_names,
        "image_size": module.image_size,
        "input": "uint8 N x H x W x 3",
        "ood_score": "output ood_score: > 1 means foreign (not a cell like the training cells)"
        if module.has_ood
        else None,
    }
    (folder / "classes.json").write_text(json.dumps(meta, indent=2))
    return folder


def export(cfg: DictConfig) -> Path:
    check_choice("format", cfg.format, FORMATS)
    predictor = load_predictor(cfg.ckpt_path, configured_tta(cfg), "cpu")
    if cfg.get("adapt_to"):  # bake a target site's BatchNorm statistics into the graph
        images, _ = read_unlabelled(cfg.adapt_to, image_size=predictor.image_size)
        tent = TentSettings.from_config(cfg.get("tent"))
        predictor = adapted_predictor(predictor, cfg.get("adapt", "bn"), array_loader(images, ADAPT_BATCH), tent)
    module = DeployedPredictor(predictor).eval()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if cfg.format == "onnx":
            path = export_onnx(module, out / "model.onnx")
        elif cfg.format == "pt2":
            path = export_pt2(module, out / "model.pt2")
        else:
            path = export_submission(module, out / "submission")
    evaluation, where = run_metrics(cfg.ckpt_path)
    facts = model_facts(predictor.members[0], len(predictor.members), predictor.tta.key, predictor.temperature)
    record = predictor.members[0].data_record
    data = {"source": json.dumps(record.get("source", {}))} if record else None
    write_model_card(path if path.is_dir() else path.parent, facts, evaluation, data, where)
    adapted = f", BatchNorm adapted ({cfg.get('adapt', 'bn')}) to {cfg.adapt_to}" if cfg.get("adapt_to") else ""
    print(f"Exported {cfg.ckpt_path} (TTA {predictor.tta.key}, {len(predictor.members)} member(s){adapted}) -> {path}")
    return path
