"""A checkpoint is data, never code: crafted hyperparameters that name callables (the gadgets
a probe used on main: delete a file, empty a file, unpickle a second file) or hold unknown
keys and values are refused by every command that reads a checkpoint, with one line and
exit 2, before anything they name is called."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodcells.core.errors import CheckpointError
from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.inference.checkpoints import load_classifier, safe_load
from bloodcells.models.hparams import migrate_hparams
from tests.helpers import WritesAFile, assert_one_line_error, run_cli, run_train_cli, tiny_classifier

SAMPLE = PROJECT_ROOT / "data" / "sample"
PRECIOUS = "precious data\n"


@pytest.fixture
def scene(tmp_path: Path) -> dict:
    """A victim file, pickled payloads that would create a marker, and clean hyperparameters."""
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    marker = tmp_path / "payload-ran"
    torch.save(WritesAFile(marker), tmp_path / "payload.pt")
    np.save(tmp_path / "payload.npy", np.array([WritesAFile(marker)], dtype=object), allow_pickle=True)
    model = tiny_classifier()
    return {"dir": tmp_path, "victim": victim, "marker": marker, "model": model, "hparams": dict(model.hparams)}


GADGETS = {
    "unlink": lambda s: {"_target_": "pathlib.Path.unlink", "_args_": [str(s["victim"])]},
    "io.open": lambda s: {"_target_": "io.open", "_args_": [str(s["victim"]), "w"]},
    "torch.load": lambda s: {"_target_": "torch.load", "_args_": [str(s["dir"] / "payload.pt")], "weights_only": False},
    "numpy.load": lambda s: {"_target_": "numpy.load", "_args_": [str(s["dir"] / "payload.npy")], "allow_pickle": True},
}


def write(scene: dict, name: str, **replace) -> Path:
    hparams = copy.deepcopy(scene["hparams"])
    hparams.update(replace)
    path = scene["dir"] / name
    torch.save({"state_dict": scene["model"].state_dict(), "hyper_parameters": hparams}, path)
    return path


def untouched(scene: dict) -> None:
    assert scene["victim"].read_text() == PRECIOUS
    assert not scene["marker"].exists(), "a second file was unpickled"


@pytest.mark.parametrize("gadget", sorted(GADGETS))
def test_a_gadget_in_the_loss_is_refused_by_the_library_before_it_runs(scene, gadget):
    path = write(scene, "crafted.ckpt", loss=GADGETS[gadget](scene))
    with pytest.raises(CheckpointError, match=r"hyper_parameters\.loss\._target_"):
        load_classifier(path)
    untouched(scene)


OPTIM_GADGET = {
    "_target_": "bloodcells.models.optimizers.make_optimizer",
    "_partial_": True,
    "optimizer": "pathlib.Path.unlink",
}


@pytest.mark.parametrize(
    "group, value, named",
    [
        ("optim", OPTIM_GADGET, "optim.optimizer='pathlib.Path.unlink'"),
        ("optim", {"_target_": "io.open", "_partial_": True}, "optim._target_='io.open'"),
        ("optim", {"name": "rmsprop", "lr": 0.1}, "optim.name='rmsprop'"),
        ("optim", {"name": "adam", "lr": 0.1, "foreach": True}, "optim.foreach=True: unknown key"),
        ("optim", {"name": "adam", "lr": float("nan")}, "optim.lr=nan"),
        ("optim", {"name": "adam", "lr": -0.1}, "optim.lr=-0.1"),
        ("loss", {"name": "focal", "reduction": "none"}, "loss.reduction='none': unknown key"),
        ("loss", {"name": "focal", "class_weights": "os.system"}, "loss.class_weights='os.system'"),
        ("sched", {"decay": "cosine", "_target_": "io.open"}, "sched._target_='io.open': unknown key"),
        ("sched", {"decay": "exponential"}, "sched.decay='exponential'"),
        ("head", {"hidden": [256], "activation": "gelu"}, "head.activation='gelu': unknown key"),
        ("head", {"hidden": ["io.open"]}, "head.hidden=['io.open']"),
        ("finetune", {"stages": [{"epoch": 0, "callback": "io.open"}]}, "finetune.stages[0].callback='io.open'"),
        ("finetune", {"stages": [{"epoch": 0, "unfreeze": "some"}]}, "finetune.stages[0].unfreeze='some'"),
        ("image_size", 0, "image_size=0"),
        ("loader", {"_target_": "io.open"}, "loader={'_target_': 'io.open'}: unknown key"),
    ],
)
def test_an_unknown_key_or_value_in_every_hyperparameter_group_is_named(scene, group, value, named):
    path = write(scene, "crafted.ckpt", **{group: value})
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    assert f"hyper_parameters.{named}" in str(err.value)
    assert str(path) in str(err.value)


def test_the_targets_that_bloodcells_wrote_migrate_to_names(scene):
    """Checkpoints of the previous main: the configs' own _target_ values, nothing else."""
    legacy = copy.deepcopy(scene["hparams"])
    legacy["loss"] = {"_target_": "bloodcells.models.losses.FocalLoss", "gamma": 2.0, "class_weights": "balanced"}
    legacy["optim"] = {
        "_target_": "bloodcells.models.optimizers.make_optimizer",
        "_partial_": True,
        "optimizer": "torch.optim.AdamW",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "head_weight_decay": None,
    }
    migrated = migrate_hparams(legacy, "old.ckpt")
    assert migrated["loss"] == {"name": "focal", "gamma": 2.0, "class_weights": "balanced"}
    assert migrated["optim"]["name"] == "adamw" and "_target_" not in migrated["optim"]
    first = {**legacy, "optim": {"_target_": "timm.optim.Lion", "_partial_": True, "lr": 1e-4}}
    assert migrate_hparams(first, "older.ckpt")["optim"] == {"name": "lion", "lr": 1e-4}
    path = write(scene, "old.ckpt", loss=legacy["loss"], optim=legacy["optim"])
    model = load_classifier(path)
    assert model.criterion.gamma == 2.0 and model.hparams.optim["name"] == "adamw"
    torch.testing.assert_close(model.state_dict(), scene["model"].state_dict())


def test_a_callback_state_that_lists_a_remote_url_is_refused(scene):
    """Lightning deletes files that drop out of a restored top-k list: local ones only inside
    its checkpoint dir (its own guard), remote ones anywhere."""
    path = scene["dir"] / "crafted.ckpt"
    state = {"dirpath": str(scene["dir"] / "checkpoints"), "best_k_models": {"s3://bucket/their-model.ckpt": 0.1}}
    body = {"state_dict": scene["model"].state_dict(), "hyper_parameters": scene["hparams"]}
    torch.save({**body, "callbacks": {"ModelCheckpoint{}": state}}, path)
    with pytest.raises(CheckpointError, match="not a local file path"):
        safe_load(path)


# --- through the CLI ---------------------------------------------------------------------------


def commands(scene: dict, path: Path) -> dict:
    log = f"paths.log_dir={scene['dir']}"
    ensemble = scene["dir"] / "ensemble.json"
    ensemble.write_text(
        json.dumps({"format": "bloodcells-ensemble", "version": 1, "members": [{"checkpoint": path.name, "weight": 1}]})
    )
    last = scene["dir"] / "train" / "runs" / "2020-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(path.read_bytes())
    return {
        "predict": lambda: run_cli("predict", f"ckpt_path={path}", f"input={SAMPLE / 'ig'}", log),
        "evaluate": lambda: run_cli("evaluate", f"ckpt_path={path}", log),
        "export": lambda: run_cli("export", f"ckpt_path={path}", log),
        "explain": lambda: run_cli("explain", f"ckpt_path={path}", log),
        "ensemble": lambda: run_cli("ensemble", f"members=[{path}]", log),
        "predict ensemble.json": lambda: run_cli("predict", f"ckpt_path={ensemble}", f"input={SAMPLE / 'ig'}", log),
        "train ckpt_path=FILE": lambda: run_train_cli(f"ckpt_path={path}", log_dir=scene["dir"], check=False),
        "train ckpt_path=last": lambda: run_train_cli("ckpt_path=last", log_dir=scene["dir"], check=False),
    }


@pytest.mark.slow
def test_every_command_that_reads_a_checkpoint_refuses_a_gadget(scene):
    path = write(scene, "crafted.ckpt", loss=GADGETS["unlink"](scene))
    for name, run in commands(scene, path).items():
        out = run()
        assert_one_line_error(out, "refused", "hyper_parameters.loss._target_='pathlib.Path.unlink'")
        untouched(scene)
        assert "predictions" not in out.stdout, name
