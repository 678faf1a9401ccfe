"""One image-size policy: readers, the training and evaluation pipelines, ``predict``,
``evaluate`` and the exported graph bring an image to the model's size through one function
(centre crop + Lanczos), so a 128-px model scores a 96-px npz the same way on every path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bloodcells import CLASS_NAMES
from bloodcells.data.datamodule import BloodCellDataModule
from bloodcells.data.readers import read_folder, read_npz, read_unlabelled
from bloodcells.data.resize import resize_array, resize_images
from bloodcells.inference.deploy import DeployedPredictor
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.export import export
from bloodcells.runs.predict import predict
from tests.helpers import SAMPLE_DIR, compose_config, run_submission, save_checkpoint, tiny_classifier


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    data = read_folder(SAMPLE_DIR)
    return data.images[::8][:40], data.labels[::8][:40]


def test_the_resize_is_pil_lanczos_after_a_centre_crop(cells):
    """PIL is the independent reference (the PBC preprocessing). PIL rounds fixed-point sums,
    we round float32 ones: a pixel a level off after the first pass can be two off after the
    second (Lanczos weights sum to more than 1 in absolute value), and that is rare."""
    images, _ = cells
    for size in (64, 128, 160):
        ours = resize_array(images, size).astype(int)
        pil = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)) for a in images])
        diff = np.abs(ours - pil.astype(int))
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3, (size, diff.max(), (diff > 0).mean())
    wide = np.ascontiguousarray(np.concatenate([images[0], images[1][:, :40]], axis=1))  # 96 x 136
    square = Image.fromarray(wide[:, 20:116]).resize((128, 128), Image.Resampling.LANCZOS)
    assert np.abs(resize_array(wide, 128).astype(int) - np.asarray(square).astype(int)).max() <= 1
    assert resize_array(images, 96) is images  # the model's own size is not touched


def test_readers_pipelines_and_the_graph_resize_identically(cells, tmp_path):
    images, labels = cells
    npz = tmp_path / "cells.npz"
    np.savez(npz, images=images, labels=labels[:, None])
    expected = resize_array(images, 128)
    read, _ = read_unlabelled(npz, image_size=128)  # predict's reader
    assert np.array_equal(read, expected)
    dm = BloodCellDataModule(lambda class_names: read_npz(npz, class_names), CLASS_NAMES, 128)
    piped = np.stack([dm.eval_pipeline(image=a)["image"] for a in images])  # training's eval pipeline
    assert np.array_equal(piped, expected)
    graph = DeployedPredictor(load_predictor(save_checkpoint(tiny_classifier(128), tmp_path / "m.ckpt")))
    inside = resize_images(torch.from_numpy(images).permute(0, 3, 1, 2), graph.image_size)
    assert np.array_equal(inside.permute(0, 2, 3, 1).to(torch.uint8).numpy(), expected)


def discriminative_model(image_size: int, images: np.ndarray, labels: np.ndarray):
    """A random tiny model whose last layer is fitted by least squares to these cells, so that
    it answers several classes with clear margins (no near ties for float noise to flip)."""
    torch.manual_seed(3)
    model = tiny_classifier(image_size)
    last = model.head[-1]
    seen = []
    handle = last.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(torch.from_numpy(resize_array(images, image_size)).permute(0, 3, 1, 2))
        handle.remove()
        feats = torch.cat([seen[0], torch.ones(len(images), 1)], dim=1).double()
        target = torch.nn.functional.one_hot(torch.from_numpy(labels), 8).double() * 10
        solution = torch.linalg.lstsq(feats, target, driver="gelsd").solution.float()
        last.weight.copy_(solution[:-1].T)
        last.bias.copy_(solution[-1])
    return model


def read_probs(path: Path) -> np.ndarray:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])


def test_predict_evaluate_and_the_exported_graph_agree_on_an_npz_of_another_size(cells, tmp_path):
    pytest.importorskip("onnxruntime")
    images, labels = cells
    npz = tmp_path / "cells96.npz"
    np.savez(npz, images=images, labels=labels[:, None])
    ckpt = save_checkpoint(discriminative_model(128, images, labels), tmp_path / "m128.ckpt")
    predicted = predict(
        compose_config("predict", [f"ckpt_path={ckpt}", f"input={npz}", f"output={tmp_path / 'p.csv'}"], tmp_path)
    )
    evaluate(
        compose_config(
            "evaluate",
            [f"ckpt_path={ckpt}", "data=npz", f"data.reader.path={npz}", "split=all", "data.num_workers=0"],
            tmp_path / "eval",
        )
    )
    by_predict = read_probs(predicted)
    by_evaluate = read_probs(tmp_path / "eval" / "predictions.csv")
    assert np.array_equal(by_predict.argmax(1), by_evaluate.argmax(1))
    assert np.abs(by_predict - by_evaluate).max() <= 1e-5
    assert len(set(by_predict.argmax(1))) >= 4  # a model that answers one class proves nothing
    folder = export(compose_config("export", [f"ckpt_path={ckpt}", "format=submission"], tmp_path / "export"))
    predicted = run_submission(folder, images, tmp_path)  # the course format: uint8 N x 96 x 96 x 3
    assert np.array_equal(predicted, by_predict.argmax(1))  # from a 128-px model
