"""The page's HTTP API as a browser uses it: the CSV for uploaded files is byte for byte what
``predict`` writes for a folder of the same files; every bad input gets a 4xx with a message
naming the file and what is wrong, and the server answers the next request; 50 images at
once and two clients at once work; nothing but the page and the run's report is served."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from bloodcells.core.errors import ConfigError
from bloodcells.runs.serve import build_server
from tests.helpers import (
    PROJECT_ROOT,
    SAMPLE_DIR,
    assert_one_line_error,
    calibrated_checkpoint,
    compose_config,
    run_cli,
)
from tests.helpers.page_client import Client

CELLS = sorted(SAMPLE_DIR.rglob("*.jpg"))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_describes_the_model_it_serves(served):
    ckpt, client = served
    status, info = client.get_json("/api/info")
    assert status == 200
    assert info["checkpoint"] == str(ckpt)
    assert info["members"] == [{"backbone": "test_efficientnet", "image_size": 96, "stain_norm": "none"}]
    assert info["image_size"] == 96 and info["tta"] == "none/prob" and info["temperature"] == 1.0
    assert info["conformal"]["alpha"] == 0.05 and info["foreign_score"] == ["mahalanobis+pixels"]
    assert info["metrics_from"] == "no metrics.json beside the model" and info["report"] is None
    for path in ("/", "/app.js", "/style.css"):
        status, content_type, body = client.request("GET", path)
        assert status == 200 and body
        assert b"http://" not in body and b"https://" not in body, f"{path} fetches from elsewhere"
    assert client.request("GET", "/")[1].startswith("text/html")


def test_the_csv_of_an_upload_is_predicts_for_the_same_files(served, tmp_path):
    ckpt, client = served
    folder = tmp_path / "cells"
    chosen = CELLS[::40]
    for f in chosen:  # a folder with class subfolders, as a user would choose it
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / f.parent.name / f.name)
    out = run_cli(
        "predict",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"output={tmp_path / 'p.csv'}",
        "backend=torch",
        f"hydra.run.dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # the browser sends the chosen folder's name first; files in reverse order on purpose
    files = [(f"cells/{f.parent.name}/{f.name}", f.read_bytes()) for f in reversed(chosen)]
    status, answer = client.post_files(files)
    assert status == 200, answer
    expected = (tmp_path / "p.csv").read_bytes().decode()
    assert answer["csv"] == expected
    rows = expected.splitlines()[1:]
    assert len(rows) == len(chosen)
    assert [r["source"] for r in answer["results"]] == [r.split(",")[0] for r in rows]
    assert [r["pred"] for r in answer["results"]] == [r.split(",")[1] for r in rows]
    first = answer["results"][0]
    assert abs(sum(first["probs"].values()) - 1) < 1e-4 and first["pred"] == max(first["probs"], key=first["probs"].get)
    assert first["prediction_set"] is not None and first["ood_score"] is not None and first["abstain"] in (True, False)
    for key in ("image", "gradcam"):
        overlay = Image.open(io.BytesIO(__import__("base64").b64decode(first[key].split(",", 1)[1])))
        assert overlay.size == (96, 96)


def test_a_blank_frame_is_flagged_as_foreign(served):
    _, client = served
    status, answer = client.post_files([("blank.png", png_bytes(np.full((96, 96, 3), 255, np.uint8)))])
    assert status == 200
    (result,) = answer["results"]
    assert result["in_distribution"] is False and result["abstain"] is True and result["ood_score"] > 1


def test_every_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(served, tmp_path):
    _, client = served
    good = CELLS[0].read_bytes()
    huge = tmp_path / "huge.png"
    Image.new("RGB", (10_000, 10_000), (200, 150, 200)).save(huge)
    cases = {
        "a text file named .jpg": ([("notes.jpg", b"this is not an image")], 400, "notes.jpg: not an image"),
        "a truncated image": ([("cut.jpg", good[: len(good) // 2])], 400, "cut.jpg: unreadable or truncated"),
        "a 10,000 x 10,000 image": ([("huge.png", huge.read_bytes())], 400, "huge.png: 10000x10000 image"),
        "an empty file": ([("empty.png", b"")], 400, "empty.png: empty file"),
        "not an image name": ([("cells.zip", good)], 400, "cells.zip: not an image file name"),
    }
    for what, (files, code, fragment) in cases.items():
        status, answer = client.post_files(files)
        assert status == code and fragment in answer["error"], (what, status, answer)
        assert client.alive(), what
    body = b"x" * (100 << 20)  # 100 MB
    status, _, answer = client.request("POST", "/api/predict", body, {"Content-Type": "multipart/form-data; b=1"})
    assert status == 413 and "larger than the 64 MB" in json.loads(answer)["error"]
    assert client.alive()
    status, _, answer = client.request("POST", "/api/predict", b"", {"Content-Type": "multipart/form-data; b=1"})
    assert status == 400 and "empty upload" in json.loads(answer)["error"]
    status, _, answer = client.request("POST", "/api/predict", b"{}", {"Content-Type": "application/json"})
    assert status == 400 and "multipart/form-data" in json.loads(answer)["error"]
    assert client.alive()


def test_a_mixed_upload_scores_the_good_images_and_names_the_bad_ones(served):
    _, client = served
    status, answer = client.post_files([("a.jpg", CELLS[0].read_bytes()), ("b.jpg", b"text")])
    assert status == 200
    assert [r["source"] for r in answer["results"]] == ["a.jpg"]
    assert answer["errors"] == [
        {"source": "b.jpg", "error": "b.jpg: not an image (its content is no image format PIL reads)"}
    ]
    assert answer["csv"].count("\n") == 2


def test_fifty_images_at_once_and_two_clients_at_once(served):
    _, client = served
    files = [(f.name, f.read_bytes()) for f in CELLS[:50]]
    status, alone = client.post_files(files)
    assert status == 200 and len(alone["results"]) == 50 and not alone["errors"]
    answers = [None, None]

    def post(i: int) -> None:
        answers[i] = client.post_files(files[i * 25 : (i + 1) * 25])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_source = {r["source"]: r["probs"] for r in alone["results"]}
    for status, answer in answers:
        assert status == 200
        for r in answer["results"]:
            assert np.allclose(list(r["probs"].values()), list(by_source[r["source"]].values()), atol=1e-5)


def test_only_the_page_and_the_runs_report_are_served(served, tmp_path):
    ckpt, client = served
    run = ckpt.parent.parent
    (run / "secret.txt").write_text("not for the page")
    for path in (
        "/secret.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/report/../secret.txt",
        "/app.js/../../x",
        "/etc/passwd",
        "/report",
    ):
        status, _, body = client.request("GET", path)
        assert status == 404 and b"not for the page" not in body, path
    status, _, _ = client.request("POST", "/elsewhere", b"x", {"Content-Length": "1"})
    assert status == 404 and client.alive()
    status, _, _ = client.request("POST", "/elsewhere", b"x", {"Content-Length": "one"})
    assert status == 400 and client.alive()  # a bad header anywhere is answered, not dropped


def test_a_run_dirs_report_and_metrics_are_linked(serve_checkpoint, tmp_path):
    run = tmp_path / "run"
    ckpt, _ = calibrated_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "report.html").write_text("<html><body>the run's report</body></html>")
    metrics = {"n": 96, "accuracy": 0.885, "balanced_accuracy": 0.88, "macro_f1": 0.87, "nll": 0.4}
    (run / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    client = serve_checkpoint(ckpt, "gradcam=false")
    status, info = client.get_json("/api/info")
    assert info["report"] == "/report" and info["metrics_from"] == str((run / "metrics.json").resolve())
    assert info["metrics"] == {k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
    status, _, body = client.request("GET", "/report")
    assert status == 200 and b"the run's report" in body
    status, answer = client.post_files([("a.jpg", CELLS[0].read_bytes())])
    assert status == 200 and answer["results"][0]["gradcam"] is None


def test_the_command_serves_and_warns_when_reachable_from_other_machines(served, tmp_path):
    ckpt, _ = served
    cmd = [
        sys.executable,
        "-m",
        "bloodcells.serve",
        f"ckpt_path={ckpt}",
        "host=0.0.0.0",
        "port=0",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(" at http://" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        port = int(re.search(r":(\d+)/", lines[-1]).group(1))
        assert Client("127.0.0.1", port).alive()
        assert any("no authentication" in line for line in lines), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_bad_setting_is_named_and_the_command_ends_with_one_line(served, tmp_path):
    ckpt, _ = served
    for override, fragment in [("port=99999", "port=99999"), ("limits.max_files=0", "limits.max_files=0")]:
        cfg = compose_config("serve", [f"ckpt_path={ckpt}", override], tmp_path)
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            build_server(cfg)
    out = run_cli("serve", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(out, "missing.ckpt")
