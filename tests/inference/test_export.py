"""Exports agree with the PyTorch predictor on real images; the submission package runs with
numpy + onnxruntime only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_folder
from bloodcells.inference.deploy import DeployedPredictor
from bloodcells.inference.ensemble_file import load_predictor, write_ensemble_file
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.export import export, export_onnx, export_pt2
from tests.helpers import compose_config, run_submission, save_checkpoint, tiny_classifier

SAMPLE = PROJECT_ROOT / "data" / "sample"


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    return read_folder(SAMPLE).images[::10][:64]  # 64 real cells, every class


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """Two members, dihedral TTA, fitted-looking weights and a temperature: all inside the graph."""
    torch.manual_seed(0)
    return Predictor([tiny_classifier(), tiny_classifier()], TTA("dihedral"), weights=[0.7, 0.3], temperature=1.4)


def reference_probs(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """What ``predict`` computes: the PyTorch scoring loop over a loader."""
    return predictor.predict(array_loader(images, 16))["probs"].numpy()


def check_agreement(probs: np.ndarray, reference: np.ndarray) -> None:
    assert np.array_equal(probs.argmax(1), reference.argmax(1))
    assert np.abs(probs - reference).max() <= 1e-4


@pytest.mark.slow
def test_pt2_and_onnx_exports_agree_with_pytorch_at_batch_1_and_64(predictor, real_images, tmp_path):
    module = DeployedPredictor(predictor).eval()
    reference = reference_probs(predictor, real_images)
    with torch.no_grad():
        pt2 = torch.export.load(str(export_pt2(module, tmp_path / "m.pt2"))).module()
        for batch in (real_images[:1], real_images):
            check_agreement(pt2(torch.from_numpy(batch)).numpy(), reference[: len(batch)])
    ort = pytest.importorskip("onnxruntime")
    with torch.no_grad():
        session = ort.InferenceSession(str(export_onnx(module, tmp_path / "m.onnx")))
    for batch in (real_images[:1], real_images):
        check_agreement(session.run(["probs"], {"images": batch})[0], reference[: len(batch)])


@pytest.mark.slow
def test_the_submission_package_runs_without_torch_or_bloodcells(predictor, real_images, tmp_path):
    pytest.importorskip("onnxruntime")
    files = tmp_path / "ckpts"
    paths = [save_checkpoint(m, files / f"m{i}.ckpt") for i, m in enumerate(predictor.members)]
    ensemble = write_ensemble_file(
        files / "ensemble.json",
        [str(p) for p in paths],
        [0.7, 0.3],
        predictor.tta,
        predictor.temperature,
        {"fitted_on": "test fixture"},
    )
    folder = export(compose_config("export", [f"ckpt_path={ensemble}", "format=submission"], tmp_path / "out"))
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "classes.json", "model.onnx", "model.py"]
    expected = reference_probs(load_predictor(ensemble), real_images).argmax(1)
    assert np.array_equal(run_submission(folder, real_images, tmp_path), expected)
