"""Backbones: the offline lite0 weights, local weight files, and the offline error message."""

from __future__ import annotations

import pytest
import timm
import torch

from bloodcells.models.backbones import (
    PretrainedWeightsError,
    backbone_norm,
    create_backbone,
    offline_weights_file,
    rename_lukemelas_to_timm,
)
from bloodcells.models.finetune import backbone_blocks, batchnorm_blocks


def test_offline_lite0_loads_every_tensor_of_the_wheel():
    model = create_backbone("tf_efficientnet_lite0", pretrained=True, weights="offline:lite0")
    state = torch.load(offline_weights_file("lite0"), map_location="cpu", weights_only=True)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = rename_lukemelas_to_timm(state, full)
    assert set(renamed) == set(full.state_dict())  # a pure rename, classifier included
    loaded = model.state_dict()
    for key, value in renamed.items():
        if not key.startswith("classifier."):
            assert torch.equal(loaded[key], value), key
    random_init = create_backbone("tf_efficientnet_lite0", pretrained=False)
    x = torch.rand(2, 3, 96, 96)
    model.eval(), random_init.eval()
    assert not torch.allclose(model(x), random_init(x), atol=1e-3)
    assert backbone_norm(model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_offline_weights_refuse_another_backbone():
    with pytest.raises(PretrainedWeightsError, match="fit tf_efficientnet_lite0, not backbone 'efficientnet_lite0'"):
        create_backbone("efficientnet_lite0", weights="offline:lite0")


def test_local_weights_file_for_any_timm_model(tmp_path):
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("test_efficientnet", pretrained=True, weights=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    with pytest.raises(PretrainedWeightsError, match="weights file not found"):
        create_backbone("test_efficientnet", weights=str(tmp_path / "missing.pth"))


def test_failed_download_says_how_to_work_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match="To work offline: use model=lite0"):
        create_backbone("test_efficientnet", pretrained=True)


@pytest.mark.parametrize(
    "name", ["tf_efficientnet_lite0", "test_efficientnet", "densenet121", "mobilenetv3_small_100", "vgg11"]
)
def test_blocks_partition_every_parameter_and_bn(name):
    backbone = create_backbone(name, pretrained=False)
    blocks = backbone_blocks(backbone)
    names = [n for block in blocks for n in block]
    assert sorted(names) == sorted(n for n, _ in backbone.named_parameters())
    assert len(blocks) >= 3
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    assert sum(len(b) for b in batchnorm_blocks(backbone, blocks)) == n_bn
