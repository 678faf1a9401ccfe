"""Every option of every config group composes, and instantiates into real objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from bloodcells.config import CONFIG_DIR
from tests.conftest import compose_config

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and any(p.glob("*.yaml")))
NEEDS_VALUE = {"data/folder": ["data.root=x"], "data/npz": ["data.path=x.npz"], "data/medmnist": ["data.path=x.npz"]}


def options() -> list[str]:
    out = []
    for group in GROUPS:
        for f in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            if not f.stem.startswith("_"):
                out.append(f"{group}/{f.stem}")
    return out


@pytest.mark.parametrize("option", options())
def test_every_group_option_composes(option: str, tmp_path: Path) -> None:
    group, name = option.split("/")
    if group == "clean":  # nested in data as data.clean_options
        cfg = compose_config("clean", [f"clean@data.clean_options={name}"], tmp_path)
        assert cfg.data.clean_options.threshold >= 0
        return
    cfg = compose_config("train", [f"{group}={name}", *NEEDS_VALUE.get(option, [])], tmp_path)
    assert cfg[group if group not in ("hydra", "experiment") else "task_name"] is not None
    if group == "aug":
        transforms = instantiate(cfg.aug.train)
        assert all(callable(t) for t in transforms)


@pytest.mark.parametrize("name", ["train", "evaluate", "predict", "clean"])
def test_entry_point_configs_compose(name: str, tmp_path: Path) -> None:
    overrides = {"train": [], "clean": [], "evaluate": ["ckpt_path=x"], "predict": ["ckpt_path=x", "input=y"]}[name]
    cfg = compose_config(name, overrides, tmp_path)
    assert cfg.task_name == name


def test_default_config_is_lite0_on_bundled_sample(tmp_path: Path) -> None:
    cfg = compose_config("train", [], tmp_path)
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.weights == "offline:lite0"
    assert Path(cfg.data.reader.root).is_dir()
