"""The served page in a real headless browser (Debian's chromium, driven by selenium): it
loads with nothing from elsewhere, describes the model, takes three bundled images through
its file chooser, shows the classes ``predict`` writes for the same files, sorts, and its
screenshot is saved in the run dir."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT, SAMPLE_DIR, calibrated_checkpoint, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no headless browser here: `make browser` installs Debian's chromium and chromium-driver (CI does)",
    ),
]


@pytest.fixture
def page(tmp_path):
    """(url, run dir) of ``python -m bloodcells.serve`` started as a user starts it."""
    ckpt, _ = calibrated_checkpoint(tmp_path / "model" / "m.ckpt")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bloodcells.serve", f"ckpt_path={ckpt}", "port=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while True:
        line = proc.stdout.readline()
        assert line, "the server did not start:\n" + "".join(seen)
        seen.append(line)
        found = re.search(r" at (http://\S+)", line)
        if found:
            break
    yield ckpt, found.group(1), run_dir
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_predicts_classes_for_three_uploaded_images(page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ckpt, url, run_dir = page
    files = [sorted((SAMPLE_DIR / c).glob("*.jpg"))[0] for c in ("basophil", "monocyte", "platelet")]
    folder = tmp_path / "three"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    out = run_cli(
        "predict",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"output={tmp_path / 'p.csv'}",
        f"hydra.run.dir={tmp_path / 'predict'}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "p.csv") as f:
        expected = {row["source"]: row["pred"] for row in csv.DictReader(f)}

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model dl"))
    assert "test_efficientnet" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 3)
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    shown = {r.get_attribute("data-source"): r.find_element(By.CSS_SELECTOR, "td.pred").text for r in rows}
    assert shown == expected
    assert "3 image(s) scored" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")

    browser.find_element(By.CSS_SELECTOR, "th[data-key=source]").click()
    order = [r.get_attribute("data-source") for r in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert order == sorted(expected)

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in resources), resources
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    shot = run_dir / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_says_what_is_wrong_with_a_bad_file(page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, url, _ = page
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model dl"))
    browser.find_element(By.ID, "files").send_keys(str(bad))
    wait.until(lambda d: "not an image" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
