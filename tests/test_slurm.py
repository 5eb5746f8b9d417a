"""Sweeps through the real local Slurm cluster (scripts/slurm_cluster.sh start; CI does it)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slurm
SLURM = ["launcher=slurm", "hydra.launcher.signal_delay_s=10", "hydra.launcher.timeout_min=10"]


@pytest.fixture(autouse=True)
def cluster():
    if not os.environ.get("SLURM_CONF") or not shutil.which("sinfo") or \
            subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.skip("no Slurm cluster: run `bash scripts/slurm_cluster.sh start` and "
                    "`source /tmp/dgmm-lab-slurm/env.sh` (CI does)")


def job_results(sweep_dir):
    """What submitit handed back to the Hydra sweeper for each job."""
    results = []
    for f in sorted(sweep_dir.glob(".submitit/*/*_0_result.pkl")):
        with open(f, "rb") as fh:
            status, value = pickle.load(fh)
        results.append((status, value))
    return results


def test_two_job_sweep_on_slurm(tmp_path):
    result = run_cli(["k=2,3", "debug=fast", *SLURM, f"hydra.sweep.dir={tmp_path}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {d.name: json.loads((d / "metrics.json").read_text()) for d in tmp_path.glob("k=*")}
    assert sorted(metrics) == ["k=2", "k=3"]
    returned = job_results(tmp_path)
    assert [s for s, _ in returned] == ["success", "success"]
    assert sorted(v.return_value for _, v in returned) == sorted(m["val/nll"] for m in metrics.values())


def test_ddp_under_slurm_matches_one_process(tmp_path):
    common = ["k=3", "debug=fast", "data.n_samples=3001", "model.tol=0", "trainer.max_epochs=4"]
    one = run_cli([*common, f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli([*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *SLURM,
                   f"hydra.sweep.dir={tmp_path / 'slurm'}", "hydra.sweep.subdir=job", "-m"])
    assert two.returncode == 0, two.stderr[-3000:]
    # Lightning's lines go through Hydra's job logging (stdout) since it is imported after it
    logs = "".join(p.read_text() for p in (tmp_path / "slurm").glob(".submitit/*/*_log.*"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs  # Slurm started the second rank
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "slurm" / "job" / "metrics.json").read_text())
    for key in ("train/log_likelihood", "val/nll", "test/nll", "train/bic"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9), key


def test_cancelled_job_is_reported_as_failed(tmp_path):
    cmd = [sys.executable, "-m", "dgmm_lab.train", "k=3", "data.n_samples=200000",
           "trainer.max_epochs=1000", "model.tol=0", "model.max_iter=1000", "trainer.enable_progress_bar=false",
           *SLURM, f"hydra.sweep.dir={tmp_path}", "-m"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id = None
    deadline = time.time() + 120
    while time.time() < deadline and job_id is None:
        ids = [p.name.split("_")[0] for p in tmp_path.glob(".submitit/*/*_submitted.pkl")]
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()
        running = [i for i in out if any(i.startswith(j) for j in ids)]
        job_id = running[0] if running else None
        time.sleep(0.5)
    assert job_id, "the job never started"
    subprocess.run(["scancel", job_id], check=True)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "CANCELLED" in output or "UncompletedJobError" in output, output[-3000:]


def test_usr2_checkpoints_requeues_and_resumes(tmp_path):
    """submitit's preemption path: USR2 -> requeue -> the rerun resumes from last.ckpt."""
    cmd = [sys.executable, "-m", "dgmm_lab.train", "k=4", "data.n_samples=400000", "model.tol=0",
           "trainer.max_epochs=12", "trainer.enable_progress_bar=false",
           *SLURM, f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job", "-m"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "job" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while time.time() < deadline and not last.exists():
        time.sleep(0.5)
    assert last.exists(), "no checkpoint before the deadline"
    job_id = next(tmp_path.glob(".submitit/*/*_submitted.pkl")).name.split("_")[0]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in tmp_path.glob(".submitit/*/*_log.*"))
    assert "requeue" in logs.lower(), logs[-3000:]
    assert (tmp_path / "job" / "metrics.json").exists()
    train_log = (tmp_path / "job" / "train.log").read_text()
    assert "resuming from" in train_log
