"""Trust: safe checkpoints, resume that checks what it resumes, one-line errors for bad
checkpoints, config mistakes and data edge cases, SIGTERM, cleaning-cache robustness."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bloodcells.cleaning.pipeline import clean_dataset
from bloodcells.core.errors import CheckpointError, ConfigError, DataError
from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.datamodule import apply_cleaning
from bloodcells.data.images import ImageSet
from bloodcells.data.readers import read_folder, read_unlabelled
from bloodcells.inference.checkpoints import load_classifier, safe_load
from bloodcells.models.finetune import FinetuneSchedule
from bloodcells.models.losses import class_weights
from bloodcells.runs.build import build_datamodule
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.predict import predict
from bloodcells.runs.preview import preview
from bloodcells.runs.resume import resolve_resume
from bloodcells.runs.upgrade import upgrade
from tests.helpers import (
    FAST_TRAIN,
    WritesAFile,
    assert_one_line_error,
    compose_config,
    run_cli,
    run_train_cli,
    save_checkpoint,
    tiny_classifier,
)

SAMPLE = PROJECT_ROOT / "data" / "sample"


# --- 1. a checkpoint cannot execute code -----------------------------------------------------


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    model = tiny_classifier()
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "x": WritesAFile(marker)}, path
    )
    return path, marker


def test_a_crafted_checkpoint_is_refused_before_any_code_runs(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointError, match="refused"):
        load_classifier(path)
    assert not marker.exists()


@pytest.mark.slow
def test_the_cli_refuses_a_crafted_checkpoint_in_predict_evaluate_and_train(crafted, tmp_path):
    path, marker = crafted
    assert_one_line_error(
        run_cli("predict", f"ckpt_path={path}", f"input={SAMPLE / 'ig'}", f"paths.log_dir={tmp_path}"), "refused"
    )
    assert_one_line_error(run_cli("evaluate", f"ckpt_path={path}", f"paths.log_dir={tmp_path}"), "refused")
    assert_one_line_error(run_train_cli(f"ckpt_path={path}", log_dir=tmp_path, check=False), "refused")
    assert not marker.exists()


def test_checkpoints_hold_only_plain_types_and_old_ones_can_be_upgraded(tmp_path):
    from omegaconf import OmegaConf

    model = tiny_classifier()
    new = save_checkpoint(model, tmp_path / "new.ckpt")
    assert load_classifier(new).hparams.head == model.hparams.head  # loads with weights_only=True
    old = tmp_path / "old.ckpt"
    hparams = {**dict(model.hparams), "head": OmegaConf.create(dict(model.hparams.head))}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, old)
    with pytest.raises(CheckpointError, match="python -m bloodcells.checkpoints upgrade"):
        safe_load(old)
    upgrade(old)
    torch.testing.assert_close(load_classifier(old).state_dict(), model.state_dict())


# --- 3. ckpt_path=last picks a checkpoint of this run's model and data -------------------------


def test_resume_last_skips_checkpoints_of_another_model_or_dataset(tmp_path, make_images):
    runs = tmp_path / "train" / "runs"
    cfg = compose_config("train", FAST_TRAIN + ["ckpt_path=last", f"paths.log_dir={tmp_path}"], tmp_path / "new")
    cfg.paths.log_dir = str(tmp_path)

    def write_last(name: str, model, source: dict, age_s: int) -> Path:
        path = save_checkpoint(model, runs / name / "checkpoints" / "last.ckpt")
        ckpt = torch.load(path, weights_only=True)
        ckpt["BloodCellDataModule"] = {"source": source}
        torch.save(ckpt, path)
        mtime = time.time() - age_s  # explicit ages: no reliance on the file system's clock resolution
        os.utime(path, (mtime, mtime))
        return path

    sample_source = {"reader": "bloodcells.data.readers.read_folder", "image_size": "96", "root": str(SAMPLE.resolve())}
    ours = write_last("a", tiny_classifier(), sample_source, age_s=30)
    write_last(
        "b",
        tiny_classifier(head={"hidden": [16], "dropout": 0.0, "input_dropout": 0.0, "input_batchnorm": False}),
        sample_source,
        age_s=20,
    )
    write_last("c", tiny_classifier(), {**sample_source, "root": "/elsewhere"}, age_s=10)
    assert resolve_resume(cfg) == str(ours)  # the newest two belong to another head / dataset
    os.remove(ours)
    with pytest.raises(CheckpointError, match="none of the 2 last.ckpt") as err:
        resolve_resume(cfg)
    assert "data source" in str(err.value) and "/elsewhere" in str(err.value)


# --- 4. corrupt, truncated, foreign checkpoints --------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"just some text\n", "not a readable checkpoint"),
        ("half", "not a readable checkpoint"),
        ("dict", "not a Lightning checkpoint"),
        ("lightning", "not a bloodcells checkpoint"),
    ],
)
def test_bad_checkpoint_files_give_one_message(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if content == "half":
        save_checkpoint(tiny_classifier(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content == "lightning":
        torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(path)


@pytest.mark.slow
def test_cli_bad_and_empty_checkpoint_paths(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    assert_one_line_error(
        run_cli("evaluate", f"ckpt_path={text}", f"paths.log_dir={tmp_path}"), "notes.ckpt", "not a readable checkpoint"
    )
    assert_one_line_error(
        run_cli("predict", "ckpt_path=", f"input={SAMPLE}", f"paths.log_dir={tmp_path}"), "ckpt_path is empty"
    )
    assert_one_line_error(run_cli("predict", f"input={SAMPLE}", f"paths.log_dir={tmp_path}"), "ckpt_path is required")


# --- 5. config mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, option",
    [
        ("data.batch_size=0", "data.batch_size=0"),
        ("data.sampler=balanced", "data.sampler='balanced'"),
        ("data.num_workers=-1", "data.num_workers=-1"),
        ("data.val_fraction=0.9", "data.val_fraction=0.9"),
    ],
)
def test_bad_data_options_name_the_option(tmp_path, override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.").replace("[", r"\[")):
        dm = build_datamodule(compose_config("train", [override], tmp_path))
        dm.setup()


def test_bad_evaluate_predict_preview_loss_and_stage_options(tmp_path):
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    with pytest.raises(ConfigError, match="split='tset'.*test, val, train, all"):
        evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "split=tset"], tmp_path / "e"))
    with pytest.raises(ConfigError, match="batch_size=0"):
        predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={SAMPLE}", "batch_size=0"], tmp_path / "p"))
    with pytest.raises(ConfigError, match="is a folder"):
        predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={SAMPLE}", f"output={tmp_path}"], tmp_path))
    with pytest.raises(ConfigError, match="n=0"):
        preview(compose_config("preview", ["n=0"], tmp_path / "v"))
    with pytest.raises(ConfigError, match="loss.class_weights='inverse'"):
        class_weights(np.array([5, 5]), "inverse")
    with pytest.raises(ConfigError, match="finetune.stages: bad stage"):
        FinetuneSchedule([{"epoch": 0, "unfreez": 2}], 4)
    with pytest.raises(ConfigError, match="unfreeze must be an int"):
        FinetuneSchedule([{"epoch": 0, "unfreeze": "half"}], 4)


@pytest.mark.slow
def test_cli_config_mistakes_end_with_one_line(tmp_path):
    assert_one_line_error(run_train_cli("data=npz", log_dir=tmp_path, check=False), "data.reader.path is required")
    assert_one_line_error(run_train_cli("data.batch_size=0", log_dir=tmp_path, check=False), "data.batch_size=0")
    out = run_train_cli("model=effv2s", log_dir=tmp_path, check=False)  # offline: fails at once
    assert_one_line_error(out, "model.weights=", "model.pretrained=false")
    assert "model.backbone.weights" not in out.stderr


# --- 7. data edge cases -----------------------------------------------------------------------


def write_tree(root: Path, images: dict[str, np.ndarray]) -> Path:
    for rel, image in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
    return root


def test_decompression_bomb_names_the_file(tmp_path, make_images, monkeypatch):
    write_tree(tmp_path, {"ig/a.png": make_images(1, 96)[0]})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 96x96 > 2x the limit: PIL calls it a bomb
    with pytest.raises(DataError, match=r"ig/a.png: refused, image too large"):
        read_folder(tmp_path)


def test_images_in_nested_subfolders_are_refused(tmp_path, make_images):
    write_tree(tmp_path, {"ig/a.png": make_images(1, 32)[0], "ig/more/b.png": make_images(1, 32)[0]})
    with pytest.raises(DataError, match="ig/more: images in a subfolder of class folder 'ig'"):
        read_folder(tmp_path)


def test_upscaled_and_resized_images_are_warned_about(tmp_path, make_images, caplog):
    write_tree(tmp_path, {"ig/big.png": make_images(1, 96)[0], "ig/tiny.png": make_images(1, 1)[0]})
    with caplog.at_level(logging.WARNING):
        data = read_folder(tmp_path, image_size=96)
    assert data.images.shape == (2, 96, 96, 3)
    assert "1 images are not 96x96" in caplog.text
    assert "get upscaled, the smallest" in caplog.text and "tiny.png (1x1)" in caplog.text
    with pytest.raises(DataError, match="differs from"):  # without image_size, mixed sizes are an error
        read_folder(tmp_path)


def test_npz_inputs_upper_case_suffix_and_missing_images_key(tmp_path, make_images):
    with open(tmp_path / "X.NPZ", "wb") as f:  # np.savez would append .npz to the name
        np.savez(f, images=make_images(3, 96))
    images, sources = read_unlabelled(tmp_path / "X.NPZ")
    assert images.shape == (3, 96, 96, 3) and sources[0] == "X.NPZ[0]"
    np.savez(tmp_path / "y.npz", pictures=make_images(3, 96))
    with pytest.raises(DataError, match="missing key 'images' \\(course npz\\) or 'test_images'"):
        read_unlabelled(tmp_path / "y.npz")


def test_an_empty_split_names_the_file_and_the_option(tmp_path, make_images):
    np.savez(tmp_path / "few.npz", images=make_images(8, 96), labels=np.arange(8))
    cfg = compose_config(
        "train", ["data=npz", f"data.reader.path={tmp_path / 'few.npz'}", "data.val_fraction=0.0"], tmp_path
    )
    dm = build_datamodule(cfg)
    with pytest.raises(DataError, match=r"few.npz: the 'val' split is empty.*data.val_fraction"):
        dm.dataset("val")


def test_cleaning_that_would_remove_every_image_is_an_error(make_images):
    image = make_images(1, 32)[0]
    images = np.stack([image] * 6)
    with pytest.raises(DataError, match="cleaning removed all 6 images"):
        clean_dataset(images, np.arange(6) % 2, [f"c{i}" for i in range(8)], pollution_min_size=5)


# --- 8. keep-one keeps the typical image ----------------------------------------------------


def test_keep_one_keeps_the_clean_original_not_its_tinted_or_blurred_copy():
    data = read_folder(SAMPLE)
    original = data.images[10]
    tinted = np.clip(original.astype(int) + [0, 60, -40], 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(original).resize((48, 48)).resize((96, 96), Image.BILINEAR))
    images = np.concatenate([tinted[None], blurred[None], data.images])  # copies come first
    labels = np.concatenate([[data.labels[10]] * 2, data.labels])
    report = clean_dataset(images, labels, data.class_names, outlier_z=6.0)
    group = next(g for g in report.groups if 0 in g["members"])
    assert group["decision"] == "duplicate_keep_one" and set(group["members"]) >= {0, 1, 12}
    assert group["kept"] == 12 and "sharpest member within the colour norm" in group["kept_because"]
    assert {0, 1} <= set(group["removed"])


# --- 9. the cleaning cache ---------------------------------------------------------------------


def test_a_corrupt_cleaning_cache_is_recomputed_with_a_warning(tmp_path, make_images, caplog):
    data = ImageSet(make_images(20, 32), np.arange(20) % 8, [str(i) for i in range(20)])
    data.images[5], data.labels[5] = data.images[4], data.labels[4]  # a same-label copy: one is dropped
    _, kept, groups, _ = apply_cleaning(data, {}, str(tmp_path))
    cache = next(tmp_path.glob("clean-*.json"))
    assert [p.name for p in tmp_path.iterdir()] == [cache.name]  # no temp file left behind
    cache.write_text(cache.read_text()[:40])  # a crash mid-write, as the old code could leave
    with caplog.at_level(logging.WARNING):
        _, kept_again, groups_again, _ = apply_cleaning(data, {}, str(tmp_path))
    assert "is corrupt" in caplog.text and "recomputing" in caplog.text
    assert np.array_equal(groups, groups_again) and np.array_equal(kept, kept_again) and len(kept) == 19
    assert json.loads(cache.read_text())["removed"] == [5]


# --- 10. SIGTERM ---------------------------------------------------------------------------------


def test_a_loader_worker_killed_by_sigterm_counts_as_the_job_being_stopped():
    from types import SimpleNamespace

    from bloodcells.runs.train import stopped_by_sigterm

    not_yet = SimpleNamespace(received_sigterm=False)  # torch raised before Lightning saw the signal
    assert stopped_by_sigterm(not_yet, RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated. "))
    assert not stopped_by_sigterm(not_yet, RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed. "))
    assert not stopped_by_sigterm(not_yet, RuntimeError("CUDA out of memory"))
    assert stopped_by_sigterm(SimpleNamespace(received_sigterm=True), RuntimeError("worker exited unexpectedly"))


def test_only_a_worker_death_by_sigterm_is_kept_from_raising_asynchronously():
    from bloodcells.core.compat import quiet_on_sigterm

    def torch_handler(message):
        def handler(signum, frame):
            raise RuntimeError(message)

        return handler

    quiet_on_sigterm(torch_handler("DataLoader worker (pid 7) is killed by signal: Terminated. "))(17, None)
    with pytest.raises(RuntimeError, match="Killed"):  # e.g. the OOM killer: still raised at once
        quiet_on_sigterm(torch_handler("DataLoader worker (pid 7) is killed by signal: Killed. "))(17, None)


@pytest.mark.slow
def test_sigterm_stops_training_with_a_non_zero_exit(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "bloodcells.train",
        "model=tiny",
        "trainer.max_epochs=1000",
        "callbacks.early_stopping=null",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={tmp_path}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)  # like a scheduler: every process of the job, workers included
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "resume with ckpt_path=last" in stderr and "Traceback" not in stderr
