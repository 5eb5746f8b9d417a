"""A small sweep and its report; evaluate's usage line.  That evaluate reproduces a run's test
metrics exactly is checked once, in test_lifecycle.py (on a checkpoint copied out of its run)."""

import csv
import subprocess
import sys

from conftest import ROOT, run_cli


def test_sweep_report_marks_done_failed_and_best_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["model=em_gmm,deep_gmm", "k=2,4", "debug=fast", f"hydra.sweep.dir={sweep}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    # a fifth job that fails, and one that never finished
    # (a job that fails while training: its loss overflows; a bad value would stop the sweep in one line)
    broken = run_cli(["model=deep_gmm", "k=3", "debug=fast", "model.optimizer.lr=1e30",
                      f"hydra.sweep.dir={sweep}", "-m"])
    assert broken.returncode == 1, broken.stderr[-3000:]  # a sweep with a failed job exits 1
    report = subprocess.run([sys.executable, "-m", "dgmm_lab.report", str(sweep)], cwd=ROOT,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (sweep / "report.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and "status" not in l]
    assert len(rows) == 5
    assert sum("| done |" in r for r in rows) == 4 and sum("failed:" in r for r in rows) == 1
    assert table.count("**") >= 2 * 5  # a best value marked for each main metric column
    with open(sweep / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (sweep / "test_nll.png").stat().st_size > 1000


def test_evaluate_without_checkpoint_is_one_line(tmp_path):
    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate"], cwd=ROOT, capture_output=True, text=True)
    assert ev.returncode == 2 and ev.stderr.strip() == (
        "dgmm_lab: error: ckpt_path is required; usage: python -m dgmm_lab.evaluate "
        "ckpt_path=CHECKPOINT [output_dir=DIR] [key=value ...]")
