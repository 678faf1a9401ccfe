"""The foreign-image score: each method against its definition, the fitting against a
foreign suite, the checkpoint round trip (and tampering), the exported graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcells.core.errors import CheckpointError
from bloodcells.data.foreign import KINDS, foreign_suite
from bloodcells.inference.checkpoints import load_classifier, write_calibration
from bloodcells.inference.deploy import DeployedPredictor
from bloodcells.inference.ood import (
    ACCEPT,
    auroc,
    fit_ood,
    foreign_report,
    knn_arrays,
    mahalanobis_arrays,
    pixel_arrays,
)
from bloodcells.inference.predictor import Predictor
from bloodcells.models.ood import OODScorer, image_statistics
from tests.helpers import SAMPLE_DIR, loader_of, save_checkpoint, tiny_classifier


def sample_cells(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    files = sorted(SAMPLE_DIR.rglob("*.jpg"))
    rows = np.linspace(0, len(files) - 1, n).astype(int)
    classes = sorted({f.parent.name for f in files})
    images = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in rows])
    return images, np.array([classes.index(files[i].parent.name) for i in rows])


def test_auroc_counts_pairs_and_half_ties():
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.1, 0.5]), np.array([0.5, 0.2])) == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_mahalanobis_score_is_the_quadratic_form_of_the_shrunk_precision():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 6, generator=g), torch.randint(0, 3, (300,), generator=g)
    scorer = OODScorer("mahalanobis", 1.0, mahalanobis_arrays(feats, labels, 3))
    means = torch.stack([feats[labels == c].mean(0) for c in range(3)]).double()
    centred = feats.double() - means[labels]
    cov = centred.T @ centred / 299
    cov = 0.9 * cov + 0.1 * cov.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    x = torch.randn(5, 6, generator=g).double()
    expected = torch.stack([((x - m) @ precision * (x - m)).sum(1) for m in means]).min(0).values
    assert torch.allclose(scorer.deep(x.float(), torch.zeros(5, 3)).double(), expected, rtol=1e-4)


def test_knn_score_is_one_minus_the_kth_cosine_similarity():
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 4, generator=g)
    scorer = OODScorer("knn", 1.0, knn_arrays(bank, seed=0), k=3)
    x = torch.randn(2, 4, generator=g)
    sims = torch.nn.functional.cosine_similarity(x[:, None], bank[None], dim=2)
    assert torch.allclose(
        scorer.deep(x, torch.zeros(2, 8)), 1 - sims.sort(dim=1, descending=True).values[:, 2], atol=1e-5
    )


def test_image_statistics_tell_a_blank_frame_and_noise_from_a_cell():
    cells, _ = sample_cells(32)
    x = torch.from_numpy(cells).permute(0, 3, 1, 2)
    scorer = OODScorer("msp", 1.0, {**pixel_arrays(image_statistics(x)), "scales": torch.ones(1, 2)}, pixels=True)
    blank = torch.full((1, 3, 96, 96), 255.0)
    noise = torch.randint(0, 256, (1, 3, 96, 96)).float()
    inside = scorer.image_distance(x)
    assert scorer.image_distance(blank) > 10 * inside.max()
    assert scorer.image_distance(noise) > 10 * inside.max()


def test_foreign_suite_makes_every_kind_from_the_given_cells_reproducibly():
    cells, _ = sample_cells(8)
    suite = foreign_suite(cells, seed=3)
    assert list(suite) == list(KINDS)
    for kind, images in suite.items():
        assert images.shape == cells.shape and images.dtype == np.uint8, kind
        assert not np.array_equal(images, cells), kind
    assert np.array_equal(suite["photo"], foreign_suite(cells, seed=3)["photo"])
    assert suite["flat"].reshape(8, -1, 3).std(axis=1).max() < 4  # one colour, light noise


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny model with a foreign-image score fitted on sample cells, saved and reloaded."""
    torch.manual_seed(0)
    cells, labels = sample_cells(96)
    model = tiny_classifier()
    fitted = fit_ood(
        model, loader_of(cells[::2], labels[::2], 32), loader_of(cells[1::2], labels[1::2], 32), cells[1::2], 32
    )
    scorer, comparison = fitted.best, fitted.comparison
    model.ood = scorer
    path = save_checkpoint(tiny_classifier(), tmp_path_factory.mktemp("ood") / "m.ckpt")
    state = torch.load(path, weights_only=True)
    state["state_dict"] = model.state_dict()
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("ood.")}
    torch.save(state, path)
    write_calibration(path, {}, scorer)
    return model, path, comparison, cells, labels


def test_fitting_compares_every_method_and_keeps_the_best(fitted):
    model, _, comparison, cells, labels = fitted
    assert [r["method"] for r in comparison][:3] == ["mahalanobis", "knn", "msp"]
    assert comparison[3]["method"].endswith("+pixels")
    best = max(comparison, key=lambda r: r["mean_auroc"])
    assert best["method"] == model.ood.method + ("+pixels" if model.ood.pixels else "")


def test_the_threshold_accepts_95_percent_of_the_validation_cells(fitted):
    model, _, _, cells, labels = fitted
    scores = Predictor([model]).predict(loader_of(cells[1::2], labels[1::2], 32))["ood"]
    assert (scores <= 1).float().mean().item() == pytest.approx(ACCEPT, abs=1 / len(scores) + 1e-6)


def test_the_score_travels_in_the_checkpoint(fitted):
    model, path, _, cells, labels = fitted
    loaded = load_classifier(path)
    loader = loader_of(cells, labels, 32)
    assert torch.allclose(Predictor([loaded]).predict(loader)["ood"], Predictor([model]).predict(loader)["ood"])


def test_an_ensemble_averages_its_members_scores(fitted):
    model, path, _, cells, labels = fitted
    loader = loader_of(cells, labels, 32)
    one = Predictor([load_classifier(path)]).predict(loader)["ood"]
    unscored = tiny_classifier()  # a member without a score does not dilute the others'
    assert torch.allclose(Predictor([load_classifier(path), unscored], weights=[0.3, 0.7]).predict(loader)["ood"], one)


def test_foreign_report_rates_every_kind(fitted):
    model, _, _, cells, labels = fitted
    inside = Predictor([model]).predict(loader_of(cells, labels, 32))["ood"]
    rows = foreign_report(Predictor([model]), cells, inside, 32)
    assert [r["kind"] for r in rows] == [*KINDS, "cells (accepted)"]
    flat = next(r for r in rows if r["kind"] == "flat")
    assert flat["auroc"] > 0.9  # blank frames are far from cells in the image statistics


def test_the_exported_module_outputs_the_same_score(fitted):
    model, _, _, cells, labels = fitted
    module = DeployedPredictor(Predictor([model])).eval()
    probs, ood = module(torch.from_numpy(cells[:8]))
    expected = Predictor([model]).predict(loader_of(cells[:8], labels[:8], 8))
    assert torch.allclose(ood, expected["ood"], rtol=1e-4)
    assert torch.allclose(probs, expected["probs"], atol=1e-5)


@pytest.mark.parametrize(
    "tamper, named",
    [
        (lambda s: s.update(method="os.system"), "method"),
        (lambda s: s.update(threshold=float("nan")), "threshold"),
        (lambda s: s.update(threshold=-1.0), "threshold"),
        (lambda s: s["arrays"].update(pixel_projection=torch.full((10, 10), float("inf"))), "pixel_projection"),
        (lambda s: s["arrays"].update(scales=torch.ones(3, 3)), "scales"),
        (lambda s: s.update(extra="x"), "not what bloodcells writes"),
    ],
)
def test_a_tampered_score_is_refused_with_one_line(fitted, tmp_path, tamper, named):
    _, path, _, _, _ = fitted
    state = torch.load(path, weights_only=True)
    state["ood"]["pixels"] = True
    state["ood"]["arrays"].setdefault("pixel_centre", torch.zeros(1, 10))
    state["ood"]["arrays"].setdefault("pixel_projection", torch.eye(10))
    state["ood"]["arrays"].setdefault("scales", torch.ones(1, 2))
    tamper(state["ood"])
    torch.save(state, tmp_path / "t.ckpt")
    with pytest.raises(CheckpointError, match=named):
        load_classifier(tmp_path / "t.ckpt")
