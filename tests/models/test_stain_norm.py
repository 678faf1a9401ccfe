"""Reinhard stain normalisation in the model: correct CIELAB, images moved to the reference's
statistics, the reference measured on the training split and carried by the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.models.stain_norm import ReinhardNorm, lab_statistics, lab_to_rgb, rgb_to_lab
from bloodcells.runs.build import build_datamodule, build_model, build_trainer
from tests.helpers import SAMPLE_DIR, save_checkpoint, tiny_classifier


def test_cielab_of_reference_colours_and_the_round_trip():
    colours = torch.tensor([[255, 255, 255], [255, 0, 0], [0, 0, 255]], dtype=torch.float32).view(3, 3, 1, 1)
    lab = rgb_to_lab(colours)[:, :, 0, 0]
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])  # standard D65 values
    torch.testing.assert_close(lab, expected, atol=0.1, rtol=0)
    cells = torch.from_numpy(read_folder(SAMPLE_DIR).images[::80]).permute(0, 3, 1, 2)
    assert (lab_to_rgb(rgb_to_lab(cells)) - cells.float()).abs().max() < 0.5


def test_every_image_leaves_with_the_reference_statistics():
    cells = torch.from_numpy(read_folder(SAMPLE_DIR).images[::80]).permute(0, 3, 1, 2)
    norm = ReinhardNorm()
    norm.set_reference([65.0, 15.0, -8.0], [12.0, 6.0, 5.0])
    lab = rgb_to_lab(norm(cells.float()))
    torch.testing.assert_close(
        lab.mean(dim=(2, 3)), torch.tensor([[65.0, 15.0, -8.0]]).expand(len(cells), 3), atol=1.0, rtol=0
    )
    torch.testing.assert_close(
        lab.std(dim=(2, 3)), torch.tensor([[12.0, 6.0, 5.0]]).expand(len(cells), 3), atol=1.0, rtol=0
    )


def test_training_measures_the_reference_and_the_checkpoint_carries_it(train_cfg, tmp_path):
    cfg = train_cfg("model.stain_norm=reinhard", "+trainer.fast_dev_run=true", "callbacks=none")
    datamodule, model = build_datamodule(cfg), build_model(cfg)
    build_trainer(cfg).fit(model, datamodule=datamodule)
    mean, std = lab_statistics(datamodule.data.images[datamodule.splits["train"]])
    torch.testing.assert_close(model.stain.reference_mean, torch.tensor(mean))
    loaded = load_classifier(save_checkpoint(model, tmp_path / "m.ckpt"))
    torch.testing.assert_close(loaded.stain.reference_std, torch.tensor(std))
    assert loaded.hparams.stain_norm == "reinhard"


def test_the_exported_graph_normalises_as_the_model_does(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from bloodcells.inference.deploy import DeployedPredictor
    from bloodcells.inference.predictor import Predictor
    from bloodcells.runs.export import export_onnx

    torch.manual_seed(0)
    model = tiny_classifier(stain_norm="reinhard")
    images = read_folder(SAMPLE_DIR).images[::40]
    module = DeployedPredictor(Predictor([model])).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(images)).numpy()
        session = ort.InferenceSession(str(export_onnx(module, tmp_path / "m.onnx")))
    assert np.abs(session.run(["probs"], {"images": images})[0] - expected).max() <= 1e-4
