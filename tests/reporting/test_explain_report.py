"""Grad-CAM maps, the default layer of every zoo backbone, and report.html for train,
evaluate and ensemble runs."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.readers import read_folder
from bloodcells.models.backbones import create_backbone
from bloodcells.reporting.gradcam import default_layer, grad_cam
from bloodcells.reporting.html import SECTIONS
from bloodcells.runs.ensemble import ensemble
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.train import train
from tests.helpers import compose_config, tiny_classifier

SAMPLE = PROJECT_ROOT / "data" / "sample"


@pytest.fixture(scope="module")
def lite0():
    """lite0 with its real (offline) ImageNet weights: maps follow real image structure."""
    return tiny_classifier(backbone="tf_efficientnet_lite0", pretrained=True, weights="offline:lite0")


def test_grad_cam_maps_have_the_input_size_differ_by_class_and_follow_the_image(lite0):
    cells = torch.from_numpy(read_folder(SAMPLE).images[::80][:4]).permute(0, 3, 1, 2)
    maps = grad_cam(lite0, cells, torch.zeros(4, dtype=torch.long))
    assert maps.shape == (4, 96, 96) and maps.min() >= 0 and maps.max() <= 1
    other = grad_cam(lite0, cells, torch.full((4,), 6))
    assert (maps - other).abs().mean() > 0.05  # another class, another map
    blank = torch.full((1, 3, 96, 96), 230, dtype=torch.uint8)
    assert (grad_cam(lite0, blank, torch.zeros(1, dtype=torch.long))[0] - maps[0]).abs().mean() > 0.05


@pytest.mark.parametrize(
    "name, layer",
    [
        ("tf_efficientnet_lite0", "blocks.4"),
        ("densenet121", "features.denseblock3"),
        ("vgg19", "features.35"),
        ("mobilenetv3_small_100", None),
        ("mobilenetv2_100", None),
        ("tf_efficientnetv2_s", None),
    ],
)
def test_the_default_layer_is_the_last_stride_16_stage(name, layer):
    backbone = create_backbone(name, pretrained=False).eval()
    chosen = default_layer(backbone)
    if layer:
        assert chosen == layer
    seen = {}

    def record(module, inputs, output) -> None:
        seen["shape"] = output.shape

    backbone.get_submodule(chosen).register_forward_hook(record)
    with torch.no_grad():
        backbone(torch.zeros(1, 3, 96, 96))
    assert seen["shape"][-2:] == (6, 6)  # 96 / 16


class Checker(HTMLParser):
    """Tags must nest and close; collects section ids and image sources."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def check_report(path: Path) -> tuple[Checker, str]:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(text)
    assert checker.stack == []
    assert checker.sections == [key for key, _ in SECTIONS]
    assert checker.images and all(src.startswith("data:image/png;base64,") for src in checker.images)
    return checker, text


@pytest.mark.slow
def test_report_html_for_train_evaluate_and_ensemble_runs(tmp_path):
    cfg = compose_config(
        "train",
        [
            "model=tiny",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=3",
            "callbacks.model_checkpoint.save_top_k=2",
            "finetune=full",
        ],
        tmp_path / "train",
    )
    metrics = train(cfg)
    checker, text = check_report(tmp_path / "train" / "report.html")
    assert len(checker.images) == 6  # curves, confusion, reliability, risk-coverage, Grad-CAM grid, misclassified
    for fragment in (
        "val/balanced_acc",
        "basophil",
        "tta (dihedral/prob)",
        "model:",
        "no cleaning in this run",
        "Conformal prediction sets",
        "Foreign images",
        "How the score was chosen",
    ):
        assert fragment in text, fragment
    ckpts = sorted((tmp_path / "train" / "checkpoints").glob("epoch*.ckpt"))
    evaluate(
        compose_config("evaluate", [f"ckpt_path={metrics['best_checkpoint']}", "data.num_workers=0"], tmp_path / "eval")
    )
    _, text = check_report(tmp_path / "eval" / "report.html")
    assert "no training curves" in text and "learning curves" not in text.split('id="curves"')[1].split("</section>")[0]
    ensemble(
        compose_config(
            "ensemble", [f"members=[{ckpts[0]},{ckpts[1]}]", "data.num_workers=0", "tta=none"], tmp_path / "ens"
        )
    )
    _, text = check_report(tmp_path / "ens" / "report.html")
    assert "ensemble of 2" in text and "member 1" in text


def test_explain_scores_on_onnx_runtime_as_on_torch(tmp_path):
    """The scoring behind the captions runs on either backend; the figures are the same."""
    pytest.importorskip("onnxruntime")
    from bloodcells.runs.explain import explain
    from tests.helpers import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    figures = {}
    for backend in ("torch", "onnxruntime"):
        run = tmp_path / backend
        cfg = compose_config("explain", [f"ckpt_path={ckpt}", f"input={SAMPLE}", f"backend={backend}"], run)
        figures[backend] = Path(explain(cfg)["gradcam_grid"]).read_bytes()
    assert figures["torch"] == figures["onnxruntime"]
    assert (tmp_path / ".onnx-cache").is_dir()  # the graph was exported (cached beside the checkpoint)
