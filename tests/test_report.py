"""Sweeps as research results: jobs grouped over their replicate seeds (mean ± std, n), the
metrics each application wrote, the best marked with ties, figures, merged sweeps, report.html
(its images checked in a real browser in test_browser.py)."""

import csv
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli

from dgmm_lab.report.table import Cell, Group, group_jobs, mark_best


def report_in_process(*args, capsys=None):
    """The same command line in this process (the report's own imports are the slow part of a
    subprocess); returns (exit status, stderr)."""
    from dgmm_lab.report.__main__ import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err if capsys else ""


def report(*args, cwd=ROOT):
    result = subprocess.run([sys.executable, "-m", "dgmm_lab.report", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def table_rows(path):
    return [line for line in path.read_text().splitlines() if line.startswith("| ") and " status " not in line]


def parse_table(path):
    lines = [l for l in path.read_text().splitlines() if l.startswith("| ")]
    split = lambda line: [c.strip() for c in line.strip()[1:-1].split("|")]  # noqa: E731
    return [dict(zip(split(lines[0]), split(line))) for line in lines[1:]]


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory):
    """3 seeds x 2 k of the EM model on synthetic data, two jobs at a time (launcher=joblib)."""
    cwd = tmp_path_factory.mktemp("seeds")
    result = run_cli(["k=2,3", "seed=0,1,2", "data.split_seed=0", "launcher=joblib", "hydra.launcher.n_jobs=2",
                      "data.n_samples=600", "-m"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (cwd / "outputs" / "train" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_seeds_become_one_row_per_k_with_mean_std_and_count(seed_sweep):
    out = report(seed_sweep)
    rows = parse_table(seed_sweep / "report.md")
    assert len(rows) == 2, rows
    for cells in rows:
        assert cells["n"] == "3" and cells["status"] == "done"
        assert re.fullmatch(r"\**\d+\.\d{4} ± \d+\.\d{4}\**", cells["test/nll"]), cells
        assert "time/seconds_per_epoch" in cells and "train/bic" in cells
    assert "6 of 6 jobs finished, in 2 groups over the replicate keys seed, data.split_seed" in out.stdout
    # report.csv: the means and sample stds of the three jobs in jobs.csv
    with open(seed_sweep / "jobs.csv") as f:
        jobs = list(csv.DictReader(f))
    with open(seed_sweep / "report.csv") as f:
        groups = list(csv.DictReader(f))
    assert len(jobs) == 6 and len(groups) == 2
    for g in groups:
        values = [float(j["test/nll"]) for j in jobs if j["k"] == g["k"]]
        assert float(g["test/nll"]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(g["test/nll std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-9, abs=1e-12)
        assert g["test/nll n"] == "3" and g["finished"] == "3"
    for png in ("test_nll.png", "train_bic.png", "curves.png"):
        assert (seed_sweep / png).stat().st_size > 5000
    html = (seed_sweep / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") >= 3 and "<table>" in html


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_raw_keeps_a_row_per_job_and_replicates_are_configurable(seed_sweep, tmp_path, capsys):
    assert report_in_process(seed_sweep, "--raw", f"report.output={tmp_path / 'raw'}", capsys=capsys)[0] == 0
    assert len(table_rows(tmp_path / "raw" / "report.md")) == 6
    # k as the replicate key: a group per seed, of 2 jobs each
    assert report_in_process(seed_sweep, "report.replicates=[k]", f"report.output={tmp_path / 'by_seed'}")[0] == 0
    rows = table_rows(tmp_path / "by_seed" / "report.md")
    assert len(rows) == 3 and all("| 2 | done |" in r for r in rows), rows


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_columns_are_chosen_and_a_missing_one_is_one_line(seed_sweep, tmp_path, capsys):
    report_in_process(seed_sweep, "report.columns=[train/bic,test/acc]", f"report.output={tmp_path}")
    header = next(l for l in (tmp_path / "report.md").read_text().splitlines() if " status " in l)
    assert header.endswith("| status | train/bic | test/acc |")
    capsys.readouterr()
    code, err = report_in_process(seed_sweep, "report.columns=[test/f1]", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("dgmm_lab: error: report.columns: test/f1 not written by any finished job; allowed: all, ")
    (tmp_path / "a_file").write_text("")
    for args, start in [(["report.columns=[test/acc"], "dgmm_lab: error: report.columns='[test/acc' is not allowed; "
                                                        "allowed: a non-empty list of names"),
                        (["report.columns=[]"], "dgmm_lab: error: report.columns='[]' is not allowed"),
                        (["report.replicates=[sed]"], "dgmm_lab: error: report.replicates: sed is no job's setting; "
                                                      "allowed: keys the jobs were given, data.n_samples, "),
                        (["report.output="], "dgmm_lab: error: report.output='' is not allowed"),
                        ([f"report.output={tmp_path / 'a_file'}"], "dgmm_lab: error: report.output="),
                        (["x=y"], "dgmm_lab: error: x is not a setting of the report")]:
        code, err = report_in_process(seed_sweep, *args, capsys=capsys)
        assert code == 2 and err.startswith(start) and len(err.strip().splitlines()) == 1, (args, err)
    code, err = report_in_process(seed_sweep, "report.replicate=[k]", capsys=capsys)
    assert code == 2 and err.strip() == (
        "dgmm_lab: error: report.replicate is not a setting of the report; allowed: report.replicates, "
        "report.columns, report.choose, report.output")


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_two_sweeps_merge_into_one_report(seed_sweep, tmp_path):
    other = tmp_path / "other"
    result = run_cli(["k=4", "data.n_samples=600", f"hydra.sweep.dir={other}", "-m"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report(seed_sweep, other, cwd=tmp_path)
    (merged,) = (tmp_path / "outputs" / "reports").iterdir()
    rows = table_rows(merged / "report.md")
    assert len(rows) == 3 and rows[-1].startswith("| 4 | other | 1 | done |"), rows
    with open(merged / "jobs.csv") as f:
        assert {r["job"].split("/")[0] for r in csv.DictReader(f)} == {seed_sweep.name, "other"}


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_an_anomaly_sweep_reports_f1_auroc_and_average_precision(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 3)), rng.normal(4.0, 1.0, size=(25, 3))])
    y = np.r_[np.zeros(500), np.ones(25)]
    np.savez(tmp_path / "anomalies.npz", X=x, y=y)
    result = run_cli(["data=array", "data.path=anomalies.npz", "data.label=y", "data.normal_label=0", "k=1,2",
                      "data.split_seed=0,1", "-m"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    report(sweep)
    header = next(l for l in (sweep / "report.md").read_text().splitlines() if " status " in l)
    for column in ("test/auroc", "test/average_precision", "test/f1", "test/f1_at_threshold",
                   "test/precision_at_threshold", "test/recall_at_threshold"):
        assert f"| {column} |" in header
    # at the true rate precision = recall = F1: one column says it
    assert "| test/precision |" not in header and "| test/recall |" not in header
    assert len(table_rows(sweep / "report.md")) == 2


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_sweep_report_lists_failed_jobs_and_marks_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["model=em_gmm,deep_gmm", "k=2,4", "debug=fast", f"hydra.sweep.dir={sweep}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    # a job that fails while training: its loss overflows (a bad value would stop the sweep in one line)
    broken = run_cli(["model=deep_gmm", "k=3", "debug=fast", "model.optimizer.lr=1e30",
                      f"hydra.sweep.dir={sweep}", "-m"])
    assert broken.returncode == 1, broken.stderr[-3000:]  # a sweep with a failed job exits 1
    out = report(sweep)
    rows = table_rows(sweep / "report.md")
    assert len(rows) == 5
    assert sum("| done |" in r for r in rows) == 4 and sum("failed:" in r for r in rows) == 1
    assert "4 of 5 jobs finished, 1 failed" in out.stdout
    assert "Jobs that did not finish:" in out.stdout
    # k=4 recovers the data's clusters alike in both models: both marked; the exact NLLs of
    # the EM and the deep nll model (identity backbone) are on one scale: EM's is lower
    cells = parse_table(sweep / "report.md")
    best_acc = [(c["k"], c["model"]) for c in cells if c["test/acc"].startswith("**")]
    assert best_acc == [("4", "deep_gmm"), ("4", "em_gmm")]
    assert [(c["k"], c["model"]) for c in cells if c["test/nll"].startswith("**")] == [("4", "em_gmm")]
    assert (sweep / "test_nll.png").stat().st_size > 1000


def _group(objective, **cells):
    g = Group({"objective": objective}, {"model": "deep_gmm", "objective": objective, "data": "synthetic"}, {})
    g.cells = {m: Cell(*v) for m, v in cells.items()}
    return g


def test_best_marks_ties_within_one_std_in_each_metrics_direction():
    a = _group("nll", **{"test/acc": (0.90, 0.02, 3), "test/nll": (1.0, 0.01, 3)})
    b = _group("nll", **{"test/acc": (0.89, 0.00, 3), "test/nll": (1.5, 0.01, 3)})   # tie: 0.01 < a's std
    c = _group("nll", **{"test/acc": (0.80, 0.01, 3), "test/nll": (2.0, 0.01, 3)})
    d = _group("dagmm", **{"test/acc": (0.50, 0.01, 3), "test/nll": (-9.0, 0.1, 3)})  # its energy: own scale
    mark_best([a, b, c, d], ["test/acc", "test/nll"])
    assert [("test/acc" in g.best) for g in (a, b, c, d)] == [True, True, False, False]
    assert [("test/nll" in g.best) for g in (a, b, c, d)] == [True, False, False, False]  # lowest nll; d alone


def test_groups_use_only_finished_replicates():
    jobs = [{"job": f"s{s}", "params": {"seed": str(s), "k": "2"}, "choices": {}, "settings": {},
             "status": status, "metrics": metrics}
            for s, status, metrics in [(0, "done", {"test/acc": 0.5}), (1, "done", {"test/acc": 0.7}),
                                       (2, "failed: boom", {}), (3, "interrupted (SIGTERM; no checkpoint)", {})]]
    (g,) = group_jobs(jobs)
    assert g.cells["test/acc"].mean == pytest.approx(0.6) and g.cells["test/acc"].n == 2
    assert g.status() == "2 done, 1 failed, 1 interrupted"


@pytest.mark.slow
def test_the_mnist_benchmark_is_a_sweep_and_a_report(mnist_dir, tmp_path):
    """docs/benchmarks.md's deep clustering table: its two commands, shrunk to 2000 images."""
    result = run_cli(["experiment=mnist10k_em", "seed=0,1", "launcher=joblib", "hydra.launcher.n_jobs=2",
                      "data.limit_train=2000", "-m"], cwd=tmp_path, env={"DGMM_LAB_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "data.limit_train=2000,experiment=mnist10k_em,seed=0", "data.limit_train=2000,experiment=mnist10k_em,seed=1"]
    report(sweep)
    (row,) = parse_table(sweep / "report.md")
    accuracy, spread = (float(v.strip("*")) for v in row["test/acc"].split(" ± "))
    assert row["n"] == "2" and 0.3 < accuracy < 1 and 0 <= spread < 0.2


@pytest.mark.slow  # sweeps of real runs: default pytest keeps the pure ones
def test_k_chosen_by_validation_per_replicate(seed_sweep, tmp_path, capsys):
    """report.choose=[k]: of k=2 and k=3 on three-cluster data, validation picks k=3 on every
    seed, and the row carries the chosen jobs' own test numbers."""
    assert report_in_process(seed_sweep, "report.choose=[k]", f"report.output={tmp_path}", capsys=capsys)[0] == 0
    (row,) = parse_table(tmp_path / "report.md")
    assert row["chosen by validation"] == "k=3 ×3" and row["n"] == "3"
    with open(tmp_path / "jobs.csv") as f:
        k3 = [float(j["test/nll"]) for j in csv.DictReader(f) if j["k"] == "3"]
    assert row["test/nll"].startswith(f"{np.mean(k3):.4f}")
