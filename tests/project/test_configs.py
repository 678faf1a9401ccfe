"""Every option of every config group composes, and instantiates into real objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bloodcells.core.hydra import CONFIG_DIR
from tests.helpers import compose_config

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and any(p.glob("*.yaml")))
NEEDS_VALUE = {
    "data/folder": ["data.reader.root=x"],
    "data/npz": ["data.reader.path=x.npz"],
    "data/medmnist": ["data.reader.path=x.npz"],
}


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
    if group == "cleaning":  # nested in data as data.clean_options
        cfg = compose_config("clean", [f"cleaning@data.clean_options={name}"], tmp_path)
        assert cfg.data.clean_options.threshold >= 0
        return
    cfg = compose_config("train", [f"{group}={name}", *NEEDS_VALUE.get(option, [])], tmp_path)
    if group == "classes":  # a global package: it sets the top-level class_names
        assert list(cfg.class_names) == list(OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml").class_names)
        return
    if group == "hparams_search":  # a global package: its callback and task name reach the run
        assert cfg.task_name == f"search_{name}" and cfg.callbacks.optuna_pruning.trial is None
        return
    if group in ("experiment", "hydra"):  # hydra: consumed by Hydra before the run sees it
        assert cfg.task_name == (name if group == "experiment" else "train")
        return
    own = OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml")
    mine, composed = OmegaConf.to_container(own), OmegaConf.to_container(cfg[group], resolve=False)

    def check(theirs: dict, ours: dict, where: str) -> None:  # the option's own values reached the config
        for key, value in ours.items():
            if key == "defaults" or value == "???" or (isinstance(value, str) and value.startswith("${")):
                continue
            if isinstance(value, dict):
                check(theirs[key], value, f"{where}.{key}")
            else:
                assert theirs[key] == value, f"{where}.{key}"

    check(composed, mine, group)
    if group == "tta" and name != "stored":
        assert instantiate(cfg.tta).views == own.views
    if group == "aug":
        transforms = instantiate(cfg.aug.train)
        assert all(callable(t) for t in transforms)


@pytest.mark.parametrize("name", ["train", "evaluate", "predict", "clean", "ensemble", "preview"])
def test_entry_point_configs_compose(name: str, tmp_path: Path) -> None:
    overrides = {"evaluate": ["ckpt_path=x"], "predict": ["ckpt_path=x", "input=y"]}.get(name, [])
    cfg = compose_config(name, overrides, tmp_path)
    assert cfg.task_name == name


def test_default_config_is_lite0_on_bundled_sample(tmp_path: Path) -> None:
    cfg = compose_config("train", [], tmp_path)
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.weights == "offline:lite0"
    assert Path(cfg.data.reader.root).is_dir()


def test_cpu_30min_is_the_recipe_its_benchmark_rows_ran(tmp_path: Path) -> None:
    """BENCHMARKS.md measured the 30-minute recipe as CLI overrides (bench/budget.py): the
    experiment must compose to exactly those, or its figures describe another recipe."""
    measured = compose_config(
        "train",
        [
            "data.image_size=128",
            "loss.label_smoothing=0.1",
            "data.progressive=[[0,96],[0.5,128]]",
            "optim.lr=2e-3",
            "callbacks.time_budget.minutes=30",
            "task_name=cpu_30min",
        ],
        tmp_path,
    )
    assert compose_config("train", ["experiment=cpu_30min"], tmp_path) == measured
    assert measured != compose_config("train", ["task_name=cpu_30min"], tmp_path)
