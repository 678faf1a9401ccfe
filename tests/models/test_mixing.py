"""MixUp/CutMix on the training batch: what is mixed, with which weight, and the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodcells.core.errors import CheckpointError, ConfigError
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.models.mixing import BatchMixer
from bloodcells.runs.build import build_model
from tests.helpers import compose_config, save_checkpoint, tiny_classifier


def batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    return images, torch.arange(n) % 4


def test_mixup_blends_each_image_with_its_mirror_by_a_beta_drawn_weight():
    images, targets = batch()
    np.random.seed(3)
    mixed = BatchMixer(mixup_alpha=0.4)(images, targets)
    np.random.seed(3)
    np.random.rand()  # the draw that decides whether this batch is mixed (prob=1)
    lam = np.random.beta(0.4, 0.4)  # the same stream, drawn here independently
    assert mixed.lam == pytest.approx(lam)
    x = images.float()
    torch.testing.assert_close(mixed.images, lam * x + (1 - lam) * x.flip(0))
    assert mixed.partner_targets.tolist() == targets.flip(0).tolist()


def test_cutmix_pastes_one_box_of_the_partner_and_lam_is_the_share_of_own_pixels():
    images, targets = batch(n=4, size=32)
    np.random.seed(5)
    mixed = BatchMixer(cutmix_alpha=1.0)(images, targets)
    x = images.float()
    from_partner = (mixed.images == x.flip(0)) & (mixed.images != x)  # pixels that changed to the partner's
    box = from_partner.any(dim=(0, 1))  # H x W: where any image took its partner's pixel
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    assert box.sum() > 0 and box.sum() == (rows.numel() * cols.numel())  # one rectangle
    inside = torch.zeros_like(box)
    inside[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    torch.testing.assert_close(mixed.images[:, :, inside], x.flip(0)[:, :, inside])
    torch.testing.assert_close(mixed.images[:, :, ~inside], x[:, :, ~inside])
    assert mixed.lam == pytest.approx(1 - inside.sum().item() / inside.numel())


def test_both_on_switches_between_mixup_and_cutmix_and_prob_leaves_batches_alone():
    images, targets = batch()
    np.random.seed(0)
    mixer = BatchMixer(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5)
    kinds = []
    for _ in range(200):
        mixed = mixer(images, targets)
        if mixed is None:
            kinds.append("none")
        else:  # cutmix keeps some pixels exactly; a blend with lam in (0, 1) keeps almost none
            kept = (mixed.images == images.float()).float().mean().item()
            kinds.append("cutmix" if kept > 0.5 * mixed.lam else "mixup")
    counts = {k: kinds.count(k) for k in ("none", "mixup", "cutmix")}
    assert 70 < counts["none"] < 130 and counts["mixup"] > 25 and counts["cutmix"] > 25  # ~100 / 50 / 50
    assert BatchMixer()(images, targets) is None  # the default: off, and no draw from the RNG
    state = np.random.get_state()[1].copy()
    BatchMixer(mixup_alpha=0.0, cutmix_alpha=0.0)(images, targets)
    assert np.array_equal(np.random.get_state()[1], state)


def test_the_mixed_loss_is_cross_entropy_on_the_mixed_soft_labels():
    model = tiny_classifier(image_size=32, mix={"mixup_alpha": 1.0, "cutmix_alpha": 0.0, "prob": 1.0})
    with torch.no_grad():  # a random head answers ~uniformly: make logits differ between images
        for p in model.head.parameters():
            p.mul_(30)
    images, targets = batch(n=4, size=32)
    np.random.seed(1)
    loss = model.training_loss(images, targets)
    np.random.seed(1)
    mixed = BatchMixer(mixup_alpha=1.0)(images, targets)
    soft = mixed.lam * F.one_hot(targets, 8).float() + (1 - mixed.lam) * F.one_hot(targets.flip(0), 8).float()
    expected = F.cross_entropy(model(mixed.images), soft)  # torch's probability-target cross-entropy
    torch.testing.assert_close(loss, expected)
    swapped = (1 - mixed.lam) * F.one_hot(targets, 8).float() + mixed.lam * F.one_hot(targets.flip(0), 8).float()
    assert abs(mixed.lam - 0.5) > 0.05 and not torch.allclose(loss, F.cross_entropy(model(mixed.images), swapped))


def test_mix_config_reaches_the_model_and_travels_in_the_checkpoint(tmp_path):
    cfg = compose_config("train", ["model=tiny", "model.pretrained=false", "mix=mixcut", "mix.prob=0.5"], tmp_path)
    model = build_model(cfg)
    assert (model.mixer.mixup_alpha, model.mixer.cutmix_alpha, model.mixer.prob) == (0.8, 1.0, 0.5)
    loaded = load_classifier(save_checkpoint(model, tmp_path / "m.ckpt"))
    assert loaded.mixer.cutmix_alpha == 1.0 and loaded.hparams.mix["prob"] == 0.5
    assert not build_model(compose_config("train", ["model=tiny", "model.pretrained=false"], tmp_path)).mixer.enabled


def test_bad_mix_values_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="mix.prob=1.5"):
        tiny_classifier(mix={"mixup_alpha": 0.2, "prob": 1.5})
    with pytest.raises(ConfigError, match="mix.cutmix_alpha=-1"):
        tiny_classifier(mix={"cutmix_alpha": -1})
    with pytest.raises(ConfigError, match="mix.mixup=0.2: unknown key"):
        tiny_classifier(mix={"mixup": 0.2})
    model = tiny_classifier()
    hparams = {**dict(model.hparams), "mix": {"_target_": "os.system"}}
    from bloodcells.models.hparams import migrate_hparams

    with pytest.raises(CheckpointError, match="mix._target_"):
        migrate_hparams(hparams, "x.ckpt")
