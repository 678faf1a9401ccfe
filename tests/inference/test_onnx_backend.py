"""The ONNX Runtime backend gives the torch backend's scores (top-1 identical, probabilities
within 1e-4) on real images, with and without TTA, for one model and an ensemble, and
exports each graph once per weights and TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.onnx_backend import cache_dir, graph_key, resolve_backend
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import TTA
from tests.helpers import SAMPLE_DIR, loader_of, save_checkpoint, tiny_classifier

pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend is in the export extra")


@pytest.fixture(scope="module")
def cells():
    files = sorted(SAMPLE_DIR.rglob("*.jpg"))[::16]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return images, np.arange(len(images)) % 8


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    paths = [
        save_checkpoint(tiny_classifier(), folder / "a.ckpt"),
        save_checkpoint(tiny_classifier(), folder / "b.ckpt"),
    ]
    return [load_classifier(p) for p in paths]


def both(predictor: Predictor, loader) -> tuple[dict, dict]:
    torch_out = predictor.predict(loader)
    predictor.backend = "onnxruntime"
    return torch_out, predictor.predict(loader)


@pytest.mark.parametrize("views", ["none", "dihedral"])
def test_one_model_scores_the_same_on_both_backends(members, cells, views):
    images, labels = cells
    ours, theirs = both(Predictor(members[:1], TTA(views)), loader_of(images, labels, 16))
    assert torch.equal(ours["probs"].argmax(1), theirs["probs"].argmax(1))
    torch.testing.assert_close(theirs["probs"], ours["probs"], atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs["plain_probs"], ours["plain_probs"], atol=1e-4, rtol=0)
    assert torch.equal(theirs["index"], ours["index"])


def test_an_ensemble_scores_the_same_on_both_backends(members, cells):
    images, labels = cells
    ours, theirs = both(Predictor(members, TTA("flips"), weights=[0.3, 0.7]), loader_of(images, labels, 16))
    assert torch.equal(ours["probs"].argmax(1), theirs["probs"].argmax(1))
    torch.testing.assert_close(theirs["probs"], ours["probs"], atol=1e-4, rtol=0)


def test_the_graph_is_exported_once_beside_the_checkpoint_and_keyed_by_the_weights(members, cells):
    images, labels = cells
    model = members[0]
    Predictor([model], TTA("flips"), backend="onnxruntime").predict(loader_of(images, labels, 16))
    graph = cache_dir(model) / f"{graph_key(model, TTA('flips'))}.onnx"
    assert graph.is_file() and graph.parent.name == ".onnx-cache"
    stamp = graph.stat().st_mtime_ns
    Predictor([model], TTA("flips"), backend="onnxruntime").predict(loader_of(images, labels, 16))
    assert graph.stat().st_mtime_ns == stamp  # reused, not exported again
    assert graph_key(members[1], TTA("flips")) != graph_key(model, TTA("flips"))
    assert graph_key(model, TTA("none")) != graph_key(model, TTA("flips"))


def test_auto_picks_onnx_runtime_on_the_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_backend("auto", torch.device("cpu"), views=20_000) == "onnxruntime"
    assert resolve_backend("auto", torch.device("cpu"), views=100) == "torch"  # the export would not pay
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
