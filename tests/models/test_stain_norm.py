"""Stain normalisation in the model: Reinhard (correct CIELAB, images moved to the reference's
statistics) and Macenko (torchstain's result, a stain shift undone, blank frames untouched);
either reference measured on the training split, carried by the checkpoint, and exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.models.stain_norm import (
    MACENKO_IO,
    MacenkoNorm,
    ReinhardNorm,
    lab_statistics,
    lab_to_rgb,
    rgb_to_lab,
)
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


@pytest.mark.parametrize("name", ["reinhard", "macenko"])
def test_training_measures_the_reference_and_the_checkpoint_carries_it(train_cfg, tmp_path, name):
    cfg = train_cfg(f"model.stain_norm={name}", "+trainer.fast_dev_run=true", "callbacks=none")
    datamodule, model = build_datamodule(cfg), build_model(cfg)
    build_trainer(cfg).fit(model, datamodule=datamodule)
    expected = ReinhardNorm() if name == "reinhard" else MacenkoNorm()
    expected.fit_reference(datamodule.data.images[datamodule.splits["train"]])
    default = ReinhardNorm() if name == "reinhard" else MacenkoNorm()
    loaded = load_classifier(save_checkpoint(model, tmp_path / "m.ckpt"))
    assert loaded.hparams.stain_norm == name
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(loaded.stain.state_dict()[key], value)
        assert not torch.allclose(value, default.state_dict()[key]), f"{key} was not fitted"
    if name == "reinhard":
        mean, std = lab_statistics(datamodule.data.images[datamodule.splits["train"]])
        torch.testing.assert_close(loaded.stain.reference_mean, torch.tensor(mean))


def numpy_macenko(source: np.ndarray, target: np.ndarray, io: float = 240, alpha: float = 1, beta: float = 0.15):
    """Macenko et al. (2009) as its reference implementation writes it (numpy eigh, percentile,
    lstsq): ``source`` recoloured with ``target``'s stains. torchstain's numpy normaliser gives
    the same image, but its wheel installs a top-level ``tests`` package that hides this one."""

    def matrices(image: np.ndarray):
        od = -np.log((image.reshape(-1, 3).astype(float) + 1) / io)
        odhat = od[~np.any(od < beta, axis=1)]
        _, vecs = np.linalg.eigh(np.cov(odhat.T))
        t = odhat @ vecs[:, 1:3]
        phi = np.arctan2(t[:, 1], t[:, 0])
        lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
        v_lo, v_hi = vecs[:, 1:3] @ [np.cos(lo), np.sin(lo)], vecs[:, 1:3] @ [np.cos(hi), np.sin(hi)]
        he = np.array([v_lo, v_hi]).T if v_lo[0] > v_hi[0] else np.array([v_hi, v_lo]).T
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
        return he, conc, np.percentile(conc, 99, axis=1)

    he_ref, _, max_ref = matrices(target)
    _, conc, top = matrices(source)
    out = np.minimum(io * np.exp(-he_ref @ (conc / (top / max_ref)[:, None])), 255)
    return out.T.reshape(source.shape).astype(np.uint8), he_ref, max_ref


def test_macenko_gives_the_reference_implementations_image():
    cells = read_folder(SAMPLE_DIR).images
    for target, source in [(0, 300), (100, 500), (620, 40)]:
        expected, stains, top = numpy_macenko(cells[source], cells[target])
        norm = MacenkoNorm()
        norm.reference_stains.copy_(torch.tensor(stains, dtype=torch.float32))
        norm.reference_max.copy_(torch.tensor(top, dtype=torch.float32))
        ours = norm(torch.from_numpy(cells[source].copy()).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
        diff = np.abs(ours.numpy().astype(np.uint8).astype(int) - expected.astype(int))
        assert diff.mean() < 0.05 and diff.max() <= 1, (target, source, diff.mean(), diff.max())


def test_macenko_maps_one_tissue_under_other_stains_to_one_image_and_leaves_a_blank_frame_alone():
    """Macenko's model (two stains, Beer-Lambert): a field stained everywhere, imaged with
    other stain vectors and 1.3x the concentrations, comes out as the same image. (On real
    stain shifts of these May-Grunwald-Giemsa cells, whose pale pixels cross the method's
    stained-pixel threshold, it is far less stable than Reinhard: BENCHMARKS.md.)"""
    g = torch.Generator().manual_seed(0)
    conc = 0.3 + 1.2 * torch.rand(4, 2, 96 * 96, generator=g)
    stains = MacenkoNorm().reference_stains
    other = stains + torch.tensor([[0.10, -0.08], [-0.10, 0.05], [0.05, 0.08]])
    other = other / other.norm(dim=0, keepdim=True)
    same = (MACENKO_IO * torch.exp(-stains @ conc)).reshape(4, 3, 96, 96)
    restained = (MACENKO_IO * torch.exp(-other @ (1.3 * conc))).reshape(4, 3, 96, 96)
    norm = MacenkoNorm()
    norm.fit_reference(read_folder(SAMPLE_DIR).images[::10])
    before = (restained - same).abs().mean()
    after = (norm(restained) - norm(same)).abs().mean()
    assert before > 5 and after < 0.02 * before, (float(before), float(after))
    blank = torch.full((2, 3, 96, 96), 250.0)
    torch.testing.assert_close(norm(blank), blank)


@pytest.mark.parametrize("name", ["reinhard", "macenko"])
def test_the_exported_graph_normalises_as_the_model_does(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    from bloodcells.inference.deploy import DeployedPredictor
    from bloodcells.inference.predictor import Predictor
    from bloodcells.runs.export import export_onnx

    torch.manual_seed(0)
    model = tiny_classifier(stain_norm=name)
    images = read_folder(SAMPLE_DIR).images[::40]
    module = DeployedPredictor(Predictor([model])).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(images)).numpy()
        session = ort.InferenceSession(str(export_onnx(module, tmp_path / "m.onnx")))
    assert np.abs(session.run(["probs"], {"images": images})[0] - expected).max() <= 1e-4
