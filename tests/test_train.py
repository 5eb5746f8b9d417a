"""The training entry point end to end: outputs, TensorBoard events, sweeps, reproducibility."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, run_cli, train_in_process


def read_events(run_dir):
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event files under {run_dir}"
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("model", ["em_gmm", "deep_gmm"])
def test_run_writes_config_metrics_checkpoints_and_events(model, tmp_path):
    metrics = train_in_process([f"model={model}", *FAST], tmp_path)
    for key in ("val/nll", "test/nll", "test/acc", "test/nmi", "test/ari"):
        assert key in metrics
    # three well-separated Gaussian clusters: both models must find them
    assert metrics["test/ari"] > 0.95
    assert metrics["test/effective_clusters"] > 2.9  # of K=3, as the three equal clusters hold the samples
    assert (tmp_path / "config.yaml").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    acc = read_events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"val/nll", "test/nll"} <= scalars
    assert {"hp/test/nll", "hp/val/nll"} <= scalars  # final metrics for the HPARAMS tab


@pytest.mark.parametrize("test_ckpt", ["best", "last"])
def test_test_metrics_are_those_of_the_selected_checkpoint(test_ckpt, tmp_path):
    from dgmm_lab.evaluate import evaluate

    # far too high a learning rate: validation NLL gets worse after the first epoch
    metrics = train_in_process(["model=deep_gmm", "model.optimizer.lr=3.0", "model.scheduler=null", "trainer.max_epochs=6",
                                f"test_ckpt={test_ckpt}", *FAST], tmp_path)
    val = [e.value for e in read_events(tmp_path).Scalars("val/nll")]
    assert min(val) < val[-1]  # so best and last differ
    assert metrics["best/val/nll"] == pytest.approx(min(val), rel=1e-6)
    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    ckpt = best if test_ckpt == "best" else tmp_path / "checkpoints" / "last.ckpt"
    again = evaluate(ckpt, [], tmp_path / "eval")
    assert again["test/nll"] == metrics["test/nll"]


def test_same_seed_same_numbers(tmp_path):
    a = train_in_process(["model=deep_gmm", *FAST, "seed=3"], tmp_path / "a")
    b = train_in_process(["model=deep_gmm", *FAST, "seed=3"], tmp_path / "b")
    timing = {k for k in a if "seconds" in k}  # wall-clock time differs by nature
    assert timing and {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def test_multirun_sweep_makes_readable_job_directories(tmp_path):
    result = run_cli(["k=2,3", "covariance=full,diag", "debug=fast",
                      f"hydra.sweep.dir={tmp_path}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").exists())
    assert jobs == ["covariance=diag,k=2", "covariance=diag,k=3",
                    "covariance=full,k=2", "covariance=full,k=3"]
    for job in jobs:
        run_dir = tmp_path / job
        saved = (run_dir / "config.yaml").read_text()
        assert f"k: {job.split('k=')[1]}" in saved
        assert (run_dir / "checkpoints" / "last.ckpt").exists()
        assert "val/nll" in json.loads((run_dir / "metrics.json").read_text())
        read_events(run_dir)


def test_a_path_in_a_swept_value_makes_one_job_directory_not_a_tree(tmp_path):
    """data.path=/abs/file.csv in a sweep: its '/' are written %2F, so every job dir is a child
    of the sweep dir, where the report and the sweep's summary look."""
    data = tmp_path / "data"
    data.mkdir()
    np.savetxt(data / "d.csv", np.random.default_rng(0).normal(size=(200, 2)), delimiter=",", header="a,b",
               comments="")
    result = run_cli(["data=array", f"data.path={data / 'd.csv'}", "k=1,2", "debug=fast",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    encoded = str(data / "d.csv").replace("/", "%2F")
    assert jobs == [f"data.path={encoded},data=array,k=1", f"data.path={encoded},data=array,k=2"], jobs
    assert all((tmp_path / "sweep" / job / "metrics.json").exists() for job in jobs)
    assert "2 of 2 jobs finished" in result.stdout + result.stderr


def test_optuna_search_runs_three_trials_into_sqlite(tmp_path):
    import sqlite3

    result = run_cli(["hparams_search=nll", "hydra.sweeper.n_trials=3", "debug=fast",
                      f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best value" in result.stdout + result.stderr
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        states = [s for (s,) in db.execute("select state from trials")]
    assert states == ["COMPLETE"] * 3
    trials = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").exists())
    assert trials == ["trial-0", "trial-1", "trial-2"]
    # each trial's drawn learning rate is in its own overrides.yaml (what the report reads)
    drawn = [(tmp_path / t / "overrides.yaml").read_text() for t in trials]
    assert all("model.optimizer.lr=" in text for text in drawn), drawn
