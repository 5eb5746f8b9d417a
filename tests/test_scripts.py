"""The benchmark scripts run and their tables say what the docs claim they say."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_em_prints_a_row_with_equal_log_likelihoods():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_em.py"), "--cases", "synthetic-diag",
                             "--iters", "2", "--repeats", "1", "--threads", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| synthetic-diag"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "200000 x 32, 16" and cells[2] == "1"
    assert all(float(cells[i]) > 0 for i in (3, 4, 5))  # seconds
    assert abs(float(cells[9])) < 1e-8 and abs(float(cells[10])) < 1e-4  # float64 / float32 vs scikit-learn


@pytest.mark.slow
def test_bench_deep_runs_seeds_in_parallel_and_reports_mean_and_spread(mnist_dir, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_deep.py"), "--methods",
                             "em_gmm (PCA-50, full)", "--seeds", "0", "1", "--limit-train", "2000", "--jobs", "2"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "DGMM_LAB_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "em_gmm (PCA-50, full), seed 0" in result.stderr and "em_gmm (PCA-50, full), seed 1" in result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| em_gmm"))
    accuracy, spread = (float(v) for v in row.split("|")[2].split("+-"))
    assert 0.3 < accuracy < 1 and 0 <= spread < 0.2


def test_bench_deep_passes_overrides_and_shows_a_failed_run(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_deep.py"), "--methods",
                             "em_gmm (PCA-50, full)", "--seeds", "0", "--override", "k=0"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DGMM_LAB_CACHE_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "em_gmm (PCA-50, full), seed 0 failed with exit code 2" in result.stderr
    assert "dgmm_lab: error: k=0" in result.stderr  # the run's own one-line message
