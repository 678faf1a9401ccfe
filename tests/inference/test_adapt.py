"""adapt=bn: BatchNorm statistics re-estimated on the images to score; adapt=tent: BatchNorm
scales and shifts trained to lower the prediction entropy there, nothing else; the checkpoint
untouched either way."""

from __future__ import annotations

import copy
import csv
import hashlib

import numpy as np
import pytest
import torch

from bloodcells.core.compat import batchnorm_base
from bloodcells.core.errors import ConfigError
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_folder
from bloodcells.inference.adapt import TentSettings, adapt_batchnorm, adapted_predictor, tent
from bloodcells.inference.predictor import Predictor
from bloodcells.runs.predict import predict
from tests.helpers import SAMPLE_DIR, compose_config, save_checkpoint, tiny_classifier


def another_site(images: np.ndarray) -> np.ndarray:
    """A crude other stain: bluer and darker."""
    shifted = images.astype(np.float32) * np.array([0.7, 0.8, 1.1]) - 10
    return np.clip(shifted, 0, 255).astype(np.uint8)


def test_the_statistics_become_those_of_the_target_images():
    torch.manual_seed(0)
    model = tiny_classifier()
    target = another_site(read_folder(SAMPLE_DIR).images[::16])  # 40 cells, one batch
    adapted = adapt_batchnorm(model, array_loader(target, len(target)))
    first = next(m for m in adapted.backbone.modules() if isinstance(m, batchnorm_base()))
    seen = []  # what the first BN layer receives does not depend on any BN statistics
    reference = copy.deepcopy(model)
    bn = next(m for m in reference.backbone.modules() if isinstance(m, batchnorm_base()))
    bn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        reference(torch.from_numpy(target).permute(0, 3, 1, 2))
    x = seen[0].float()
    torch.testing.assert_close(first.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first.running_var, x.var(dim=(0, 2, 3), unbiased=True), atol=1e-4, rtol=1e-3)
    original = next(m for m in model.backbone.modules() if isinstance(m, batchnorm_base()))
    assert not torch.allclose(original.running_mean, first.running_mean)  # the model itself is unchanged
    assert adapted.training is False


def test_predict_adapts_in_memory_and_leaves_the_checkpoint_alone(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    npz = tmp_path / "site.npz"
    np.savez(npz, images=another_site(read_folder(SAMPLE_DIR).images[::16]))
    rows = {}
    for adapt in ("none", "bn", "tent"):
        out = tmp_path / f"{adapt}.csv"
        predict(
            compose_config(
                "predict", [f"ckpt_path={ckpt}", f"input={npz}", f"output={out}", f"adapt={adapt}"], tmp_path
            )
        )
        with open(out) as f:
            rows[adapt] = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in csv.DictReader(f)])
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    assert np.abs(rows["none"] - rows["bn"]).max() > 1e-3  # the statistics did change the answer
    assert np.abs(rows["bn"] - rows["tent"]).max() > 1e-4  # and the trained scales and shifts did


def test_an_unknown_adapt_method_is_named():
    with pytest.raises(ConfigError, match="adapt='shot'"):
        adapted_predictor(Predictor([tiny_classifier()]), "shot", array_loader(np.zeros((2, 96, 96, 3), np.uint8), 2))


def test_export_bakes_the_target_statistics_into_the_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from bloodcells.runs.export import export

    torch.manual_seed(0)
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    site = another_site(read_folder(SAMPLE_DIR).images[::2])  # 320 cells: several adaptation batches
    np.savez(tmp_path / "site.npz", images=site)
    cfg = compose_config("export", [f"ckpt_path={ckpt}", "format=onnx", f"adapt_to={tmp_path / 'site.npz'}"], tmp_path)
    session = ort.InferenceSession(str(export(cfg)))
    graph = session.run(["probs"], {"images": site})[0]
    out = tmp_path / "bn.csv"
    predict(
        compose_config(
            "predict", [f"ckpt_path={ckpt}", f"input={tmp_path / 'site.npz'}", f"output={out}", "adapt=bn"], tmp_path
        )
    )
    with open(out) as f:
        expected = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in csv.DictReader(f)])
    assert np.array_equal(graph.argmax(1), expected.argmax(1))
    assert np.abs(graph - expected).max() <= 1e-4


def test_a_last_batch_of_one_image_is_skipped_not_an_error():
    """2,049 test cells in batches of 128 leave one: BatchNorm1d in the head cannot adapt on it."""
    model = tiny_classifier()
    cells = another_site(read_folder(SAMPLE_DIR).images[:129])
    adapted = adapt_batchnorm(model, array_loader(cells, 128))
    whole = adapt_batchnorm(model, array_loader(cells[:128], 128))
    first = [next(m for m in a.backbone.modules() if isinstance(m, batchnorm_base())) for a in (adapted, whole)]
    torch.testing.assert_close(first[0].running_mean, first[1].running_mean)


def mean_entropy(model, images: np.ndarray) -> float:
    with torch.no_grad():
        probs = model(torch.from_numpy(images).permute(0, 3, 1, 2)).softmax(1)
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())


def test_tent_makes_the_target_predictions_confident_and_trains_only_batchnorm_scales_and_shifts():
    torch.manual_seed(0)
    model = tiny_classifier()
    target = another_site(read_folder(SAMPLE_DIR).images[::4])  # 160 cells
    loader = array_loader(target, 64)
    statistics_only = adapt_batchnorm(model, loader)
    adapted = tent(model, loader, TentSettings(steps=3, lr=0.01, batch=32))
    assert mean_entropy(adapted, target) < mean_entropy(statistics_only, target) - 0.02  # descent on its objective
    layers = {n for n, m in model.named_modules() if isinstance(m, batchnorm_base())}
    before, after = model.state_dict(), adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    affine = {k for k in changed if k.rsplit(".", 1)[0] in layers and k.endswith(("weight", "bias"))}
    assert affine, "no BatchNorm scale or shift moved"
    assert all(k.rsplit(".", 1)[0] in layers for k in changed), sorted(changed - affine)[:5]
    assert not any(p.requires_grad for p in adapted.parameters()) and adapted.training is False
    assert torch.equal(model.state_dict()[sorted(affine)[0]], before[sorted(affine)[0]])  # the model is untouched


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"steps": 0}, "tent.steps=0"),
        ({"lr": 2}, "tent.lr=2"),
        ({"batch": 1}, "tent.batch=1"),
        ({"epochs": 1}, "epochs"),
    ],
)
def test_bad_tent_settings_are_named(settings, fragment):
    images = array_loader(np.zeros((4, 96, 96, 3), np.uint8), 4)
    with pytest.raises(ConfigError, match=fragment):
        adapted_predictor(Predictor([tiny_classifier()]), "tent", images, TentSettings.from_config(settings))
