"""What a 77-case probe of the CLI found, each now refused with one line or handled."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bloodcells.core.cli import user_errors
from bloodcells.core.errors import CheckpointError
from bloodcells.core.files import owned_run_dir
from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.images import load_image
from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import AtomicCheckpointIO, load_classifier
from bloodcells.inference.ensemble_file import read_ensemble_file
from tests.helpers import SAMPLE_DIR, assert_one_line_error, run_cli, run_train_cli, save_checkpoint, tiny_classifier


def ensemble_file(tmp_path: Path, **fields) -> Path:
    save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    body = {"format": "bloodcells-ensemble", "version": 1, "members": [{"checkpoint": "m.ckpt", "weight": 1.0}]}
    body.update(fields)
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(body))  # json writes NaN and Infinity as the bare words
    return path


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"members": [{"checkpoint": "m.ckpt", "weight": float("nan")}]}, "members[0].weight=nan"),
        ({"members": [{"checkpoint": "m.ckpt", "weight": float("inf")}]}, "members[0].weight=inf"),
        ({"members": [{"checkpoint": "m.ckpt", "weight": -1}]}, "members[0].weight=-1"),
        ({"members": [{"checkpoint": "m.ckpt", "weight": "heavy"}]}, "members[0].weight='heavy'"),
        ({"members": [{"checkpoint": "m.ckpt", "weight": 0}]}, "sum to 0"),
        ({"members": [{"checkpoint": 7}]}, "members[0]="),
        ({"members": "m.ckpt"}, "members='m.ckpt'"),
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": -1.5}, "temperature=-1.5"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": "warm"}, "temperature='warm'"),
    ],
)
def test_bad_ensemble_values_are_refused_by_name(tmp_path, fields, named):
    with pytest.raises(CheckpointError) as err:
        read_ensemble_file(ensemble_file(tmp_path, **fields))
    assert named in str(err.value)


@pytest.mark.slow  # a CLI run
def test_a_bad_tta_in_an_ensemble_file_is_refused_through_the_cli(tmp_path):
    path = ensemble_file(tmp_path, tta={"views": "dihedral", "brightness": [0.9, "x"]})
    out = run_cli("predict", f"ckpt_path={path}", f"input={SAMPLE_DIR / 'ig'}", f"paths.log_dir={tmp_path}")
    assert_one_line_error(out, "bad TTA entry", "brightness")


def test_tampered_but_loadable_checkpoints_are_refused(tmp_path):
    model = tiny_classifier()
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    nan = {**state, name: torch.full_like(state[name], float("nan"))}
    torch.save({"state_dict": nan, "hyper_parameters": dict(model.hparams)}, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_classifier(tmp_path / "nan.ckpt")
    wrong = {**state, name: torch.zeros(3, 3)}
    torch.save({"state_dict": wrong, "hyper_parameters": dict(model.hparams)}, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        load_classifier(tmp_path / "shape.ckpt")
    calibrated = {"state_dict": state, "hyper_parameters": dict(model.hparams)}
    calibrated["calibration"] = {"tta": {"views": "none"}, "temperatures": {"none/prob": -2.0}}
    torch.save(calibrated, tmp_path / "cal.ckpt")
    with pytest.raises(CheckpointError, match="calibration temperature"):
        load_classifier(tmp_path / "cal.ckpt")


def test_checkpoints_upgrade_on_a_bad_file_says_so_in_one_line(tmp_path):
    notes = tmp_path / "notes.ckpt"
    notes.write_text("not a checkpoint")
    cmd = [sys.executable, "-m", "bloodcells.checkpoints", "upgrade", str(notes)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert_one_line_error(out, "notes.ckpt", "not a readable checkpoint")


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    image = load_image(tmp_path / "scan.png")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    expected = np.floor(ramp.astype(np.float64) / 257 + 0.5).astype(np.uint8)  # 8 -> 16 bit is x257
    assert np.array_equal(image[..., 0], expected)
    assert image.min() == 0 and 0 < np.median(image) < 255


def test_a_truncated_image_cache_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "cache"
    first = read_folder(SAMPLE_DIR, cache_dir=str(cache)).images.copy()
    (npy,) = cache.glob("images-*.npy")
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    again = read_folder(SAMPLE_DIR, cache_dir=str(cache))
    assert np.array_equal(np.asarray(again.images), first)
    assert "damaged" in caplog.text


@pytest.mark.slow  # a CLI run
def test_a_second_training_in_the_same_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with owned_run_dir(run_dir):  # a first training holds the dir
        out = run_train_cli(f"hydra.run.dir={run_dir}", log_dir=tmp_path, check=False)
    assert_one_line_error(out, "another training is writing into this run dir")


def test_a_failed_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_errors_end_in_one_line(capsys, code):
    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            raise OSError(code, "from the OS", "/runs/x/last.ckpt")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bloodcells: error: cannot write /runs/x/last.ckpt") and len(err.splitlines()) == 1


@pytest.mark.slow  # CLI runs
@pytest.mark.parametrize(
    "override, named",
    [
        ("optim.lr=-1", "optim.lr=-1"),
        ("data.image_size=0", "data.image_size=0"),
        ("optim.name=rmsprop", "optim.name='rmsprop'"),
        ("sched.decay=linear", "sched.decay='linear'"),
    ],
)
def test_bad_training_values_name_the_option(tmp_path, override, named):
    assert_one_line_error(run_train_cli(override, log_dir=tmp_path, check=False), named)


@pytest.mark.slow  # a CLI run
def test_weights_that_fit_nothing_are_refused_instead_of_training_from_random_init(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    out = run_train_cli(
        "model.pretrained=true", f"model.weights={tmp_path / 'other.pth'}", log_dir=tmp_path, check=False
    )
    assert_one_line_error(out, "other.pth", "fits only 0 of the")


@pytest.mark.slow  # a CLI run
def test_a_cuda_device_on_a_machine_without_one_is_named(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    out = run_cli(
        "predict", f"ckpt_path={ckpt}", f"input={SAMPLE_DIR / 'ig'}", "device=cuda", f"paths.log_dir={tmp_path}"
    )
    assert_one_line_error(out, "device='cuda'", "0 usable CUDA GPU")
