"""A run killed with SIGTERM and started again ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

ARGS = ["model=deep_gmm", "objective=dagmm", "backbone=mlp", "data.n_samples=6000",
        "trainer.max_epochs=6", "trainer.enable_progress_bar=false", "callbacks.pictures.every_n_epochs=2"]


def test_sigterm_then_rerun_equals_uninterrupted(tmp_path):
    full = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dgmm_lab.train", *ARGS, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                if torch.load(last, weights_only=False)["epoch"] >= 1:
                    break
            except Exception:  # being written
                pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    assert not (run_dir / "metrics.json").exists(), "the interrupted run must not have finished"
    interrupted_at = torch.load(last, weights_only=False)["epoch"]
    assert interrupted_at < 5

    again = run_cli([*ARGS, f"hydra.run.dir={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr + again.stdout or "Restoring states" in again.stderr + again.stdout
    expected = json.loads((tmp_path / "full" / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    untimed = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert untimed(got) == untimed(expected)
