"""Anomaly detection as a user runs it: the paper's split of the normals, the label-free
threshold fixed on validation normals, and experiment=anomaly (the project's deep detector)
on a set with planted anomalies."""

import json

import numpy as np
import pytest

from conftest import run_cli

import dgmm_lab


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """1000 normals on a curved 4-d manifold plus noise, 50 anomalies off it."""
    cwd = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    t = rng.uniform(-2, 2, size=(1000, 1))
    normal = np.hstack([t, t ** 2, np.sin(2 * t), -t]) + 0.05 * rng.normal(size=(1000, 4))
    anomalies = rng.uniform(-3, 3, size=(50, 4))
    np.savez(cwd / "planted.npz", X=np.vstack([normal, anomalies]), y=np.r_[np.zeros(1000), np.ones(50)])
    result = run_cli(["experiment=anomaly", "data.path=planted.npz", "data.label=y", "data.normal_label=0",
                      "data.test_fraction=0.5", "data.contamination=0.05", "trainer.enable_progress_bar=false",
                      "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_the_papers_split_and_the_deep_detector_find_the_planted_anomalies(planted):
    metrics = json.loads((planted / "run" / "metrics.json").read_text())
    assert metrics["test/auroc"] > 0.97 and metrics["test/average_precision"] > 0.8
    m = dgmm_lab.load(planted / "run")
    x, y = (np.load(planted / "planted.npz")[k] for k in ("X", "y"))
    flagged = m.is_anomaly(x)
    # half of the normals were held out for testing; the threshold (fixed on validation
    # normals, no labels) flags about data.contamination of normal data, most anomalies
    assert 0.01 < flagged[y == 0].mean() < 0.12
    assert flagged[y == 1].mean() > 0.8
    assert m.anomaly_info["rate"] == pytest.approx(0.05)
    assert metrics["test/f1_at_threshold"] > 0.6
    # test/f1 flags the test set's true rate (50 of 550), not data.contamination: as many
    # flagged as there are anomalies, so precision equals recall (to a tie at the cut)
    assert metrics["test/precision"] == pytest.approx(metrics["test/recall"], abs=0.03)


@pytest.mark.slow
def test_the_deep_detector_on_cardio_as_in_the_benchmark(odds_dir, tmp_path):
    """One seed of docs/benchmarks.md's ODDS table: the same command gives its number."""
    result = run_cli(["experiment=anomaly", f"data.path={odds_dir / 'cardio.mat'}", "data.label=y",
                      "data.normal_label=0", "data.test_fraction=0.5", "seed=0", "data.split_seed=0",
                      "trainer.enable_progress_bar=false", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/auroc"] == pytest.approx(0.9211484555347917, abs=0.01)


def _dagmm_aurocs(odds_dir, cwd, *settings):
    """DAGMM's network on cardio, seeds 0-2 (each with its own split), as one sweep."""
    result = run_cli(["experiment=dagmm_paper", f"data.path={odds_dir / 'cardio.mat'}", "data.label=y",
                      "data.normal_label=0", *settings, "seed=0,1,2", "data.split_seed=${seed}",
                      "trainer.enable_progress_bar=false", "hydra.sweep.dir=sweep", "-m"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.array([json.loads(p.read_text())["test/auroc"] for p in sorted(cwd.glob("sweep/*/metrics.json"))])


@pytest.mark.slow
def test_dagmm_with_the_log_error_feature_is_stable_over_seeds(odds_dir, tmp_path):
    """The paper's relative error ||x - x_hat|| / ||x|| divides by the norm that makes a
    standardised anomaly stand out: its energy ranks cardio's anomalies by chance, seed to
    seed. The project's default feature, log ||x - x_hat||, keeps the signal."""
    (tmp_path / "fixed").mkdir()
    (tmp_path / "paper").mkdir()
    fixed = _dagmm_aurocs(odds_dir, tmp_path / "fixed", "objective.error_features=[log_euclidean,cosine]")
    assert len(fixed) == 3
    assert fixed.std(ddof=1) < 0.05 and fixed.mean() > 0.85, fixed
    paper = _dagmm_aurocs(odds_dir, tmp_path / "paper")
    assert paper.std(ddof=1) > 0.05 or paper.mean() < 0.75, paper  # what the fix is for


@pytest.mark.parametrize("value", ["5", "abc", "[0,1]"])
def test_a_normal_label_the_data_lacks_is_one_line(tmp_path, value):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(100, 3)), y=np.r_[np.zeros(95), np.ones(5)])
    result = run_cli(["experiment=anomaly", "data.path=d.npz", "data.label=y", f"data.normal_label={value}",
                      "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dgmm_lab: error: data.normal_label=") and line.endswith("allowed: one of 0, 1"), line
    assert not (tmp_path / "run").exists()
