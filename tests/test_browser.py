"""TensorBoard serves a finished run's scalars, images and hparams (our tags, through its HTTP API);
headless Chromium takes a screenshot of the dashboard for people to look at.  TensorBoard's own
markup is not asserted on: it is TensorBoard's to change."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import FAST, train_in_process

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process([*FAST, "trainer.max_epochs=5", "callbacks.pictures.every_n_epochs=1"], run_dir)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if get(f"{url}/data/plugin/scalars/tags"):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()  # our own server, by its PID
        server.wait(timeout=30)


def test_tensorboard_serves_scalars_images_and_hparams(tensorboard):
    scalars = get(f"{tensorboard}/data/plugin/scalars/tags")
    tags = {t for run in scalars.values() for t in run}
    assert {"val/nll", "test/nll", "hp/test/nll"} <= tags
    images = get(f"{tensorboard}/data/plugin/images/tags")
    assert "images/components" in {t for run in images.values() for t in run}
    request = urllib.request.Request(f"{tensorboard}/data/plugin/hparams/experiment",
                                     data=json.dumps({"experimentName": ""}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        experiment = json.loads(r.read())
    hparam_names = {h["name"] for h in experiment.get("hparamInfos", [])}
    assert {"k", "covariance", "model"} <= hparam_names


def test_chromium_renders_the_dashboard(tensorboard):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "tensorboard_scalars.png"
    shot.unlink(missing_ok=True)
    profile = ARTIFACTS / "chromium-profile"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000"]
    subprocess.run([*common, f"--screenshot={shot}", f"{tensorboard}/#scalars"],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_chromium_loads_every_image_of_report_html(tmp_path):
    """report.html is one self-contained file: opened alone in a real browser (no directory
    beside it), every figure decodes."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sweep = tmp_path / "sweep"
    trained = subprocess.run([sys.executable, "-m", "dgmm_lab.train", "k=2,3", *FAST,
                              f"hydra.sweep.dir={sweep}", "-m"], capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "dgmm_lab.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    # the page tells the result in its title once loaded: images decoded / images
    probe = ("<script>window.onload=()=>{const i=[...document.images];document.title="
             "'loaded '+i.filter(x=>x.complete&&x.naturalWidth>100).length+' of '+i.length}</script>")
    alone.write_text((sweep / "report.html").read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom", alone.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>loaded (\d+) of (\d+)</title>", dom.stdout)
    assert title, dom.stdout[:2000] + dom.stderr[-2000:]
    loaded, total = map(int, title.groups())
    expected = len(list(sweep.glob("*.png")))
    assert total == expected >= 5 and loaded == total
    assert "<table>" in dom.stdout and "± " in dom.stdout
