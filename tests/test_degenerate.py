"""Degenerate fits are said out loud: a warning naming the problem, the components or
columns and the remedy, and a count in metrics.json; a healthy fit is unchanged."""

import json

import numpy as np
import pytest
import torch

from conftest import FAST, run_cli, train_in_process
from dgmm_lab.data.columns import constant_columns, dominated_columns
from dgmm_lab.mixture.diagnostics import degenerate_components, mean_feature_variance, remedy


def wide(path):
    """20 rows x 100 dimensions: about 5 training points per component of k=3."""
    np.savez(path, X=np.random.default_rng(0).normal(size=(20, 100)))


def wide_at_a_fixed_floor(path):
    """``wide`` with the regularisation pinned at 1e-6 (the default, auto, would raise it)."""
    wide(path)
    return ["model.reg_covar=1e-6"]


def with_constant_column(path):
    x = np.random.default_rng(0).normal(size=(600, 3))
    x[:, 1] = 5.0
    np.savez(path, X=x)


def with_extreme_value(path):
    x = np.random.default_rng(0).normal(size=(600, 3))
    x[7, 2] = 1e300
    np.savez(path, X=x)


@pytest.mark.parametrize("make, warnings, counts", [
    (wide_at_a_fixed_floor, ["EM: 3 of 3 components are degenerate", "a full covariance in 100 dimensions needs 101",
            "train log-likelihood 557.8 per sample", "Remedy: covariance=diag, fewer components (k), or "
            "model.reg_covar=0.9 (about the features' variance"],
     {"train/degenerate_components": 3, "data/constant_columns": 0, "data/extreme_columns": 0}),
    (with_constant_column, ["data: 1 of 3 feature columns are constant on the training split (columns 1)",
                            "drop them (data.features=[0,2])", "at the model.reg_covar floor",
                            "drop constant or duplicated feature columns"],
     {"train/degenerate_components": 3, "data/constant_columns": 1, "data/extreme_columns": 0}),
    (with_extreme_value, ["data: 1 of 3 feature columns are dominated by one extreme value (columns 2; "
                          "largest |value| 1e+300)", "drop or clip them", "(data.features=[0,1])"],
     {"data/extreme_columns": 1, "data/constant_columns": 0}),
])
def test_degenerate_fit_is_warned_of_and_counted(make, warnings, counts, tmp_path):
    extra = make(tmp_path / "d.npz") or []
    result = run_cli(["data=array", f"data.path={tmp_path / 'd.npz'}", *FAST, *extra,
                      f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for text in warnings:
        assert text in output, output[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {key: metrics[key] for key in counts} == counts


@pytest.mark.parametrize("remedy_override", ["covariance=diag", "model.reg_covar=0.9", "model.reg_covar=auto"])
def test_the_remedies_work_for_too_few_points(remedy_override, tmp_path):
    # 100 standard normal features: the true density's test NLL is 141.9 nats (6.7e7 at reg_covar=1e-6)
    wide(tmp_path / "d.npz")
    metrics = train_in_process(["data=array", f"data.path={tmp_path / 'd.npz'}", remedy_override, *FAST],
                               tmp_path / "run")
    assert metrics["train/degenerate_components"] == 0 and metrics["test/nll"] < 200


def test_automatic_regularisation_is_sane_on_200_rows_in_300_dimensions(tmp_path, caplog):
    """The default reg_covar=auto: 140 training rows cannot determine a 300-d covariance; the
    Ledoit-Wolf ridge gives a test NLL near the true density's 425.7 nats (1.1e8 at 1e-6),
    says so in the log and in metrics.json."""
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(200, 300)))
    with caplog.at_level("WARNING"):
        metrics = train_in_process(["data=array", f"data.path={tmp_path / 'd.npz'}", *FAST], tmp_path / "run")
    true_nll = 300 * 0.5 * np.log(2 * np.pi * np.e)
    assert true_nll < metrics["test/nll"] < 1.1 * true_nll
    assert 0.5 < metrics["train/reg_covar"] < 1.5
    assert "model.reg_covar=auto chose" in caplog.text and "140 training rows for 3 full components" in caplog.text


def test_healthy_fit_counts_nothing_and_keeps_its_numbers(tmp_path, caplog):
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=600)
    np.savez(tmp_path / "blobs.npz", X=np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0]])[y] + rng.normal(size=(600, 3)), y=y)
    metrics = train_in_process(["data=array", f"data.path={tmp_path / 'blobs.npz'}", "data.label=y", *FAST],
                               tmp_path / "run")
    assert metrics["train/degenerate_components"] == 0
    assert metrics["data/constant_columns"] == 0 and metrics["data/extreme_columns"] == 0
    assert "degenerate" not in caplog.text and "constant" not in caplog.text
    # this fit's metrics before the diagnostics existed (commit 28ba733); since then best/val/nll
    # is float64 (was Lightning's float32 of the same value) and train/n_iter counts the
    # iterations run (was that of the tested best checkpoint, 1)
    before = {"best/val/nll": 3.0434085309362113, "test/acc": 0.9833333333333333, "test/ari": 0.9512266647406439,
              "test/nll": 3.2413311019465376, "test/nmi": 0.9277001570919281, "train/aic": 2644.998317196075,
              "train/bic": 2762.1657038231197, "train/log_likelihood": -3.0797599014238997,
              "train/min_covariance_eigenvalue": 0.08339031347133678, "train/n_iter": 2.0,
              "val/nll": 3.0434085309362113}
    assert {key: metrics[key] for key in before} == pytest.approx(before, rel=1e-9)


def test_deep_model_reports_the_data_facts(tmp_path):
    with_constant_column(tmp_path / "d.npz")
    metrics = train_in_process(["model=deep_gmm", "data=array", f"data.path={tmp_path / 'd.npz'}", *FAST,
                                "trainer.max_epochs=1"], tmp_path / "run")
    assert metrics["data/constant_columns"] == 1


# --------------------------------------------------------------------------- the pure parts


@pytest.mark.parametrize("cov_type, counts, covariances, expected", [
    # 3 points cannot determine a 3x3 covariance (it takes 4), 40 can
    ("full", [3, 40], torch.eye(3).expand(2, 3, 3), {0: "points"}),
    # a direction with no variance but reg_covar: the floor, even with plenty of points
    ("full", [40, 40], torch.stack([torch.eye(3), torch.diag(torch.tensor([1.0, 1.0, 1e-6]))]), {1: "floor"}),
    ("diag", [1, 40], torch.ones(2, 3), {0: "points"}),
    ("diag", [40, 40], torch.tensor([[1.0, 1e-6, 1.0], [1.0, 1.0, 1.0]]), {0: "floor"}),
    ("spherical", [40, 40], torch.tensor([1e-6, 1.0]), {0: "floor"}),
    ("tied", [40, 40], torch.diag(torch.tensor([1.0, 1.0, 1e-6])), {0: "floor", 1: "floor"}),
    ("full", [40, 40], torch.eye(3).expand(2, 3, 3) * 1e-3, {}),  # small but real variances
])
def test_degenerate_components(cov_type, counts, covariances, expected):
    n = sum(counts)
    weights = torch.tensor(counts, dtype=torch.float64) / n
    found = degenerate_components(weights, covariances.double(), n, cov_type, reg_covar=1e-6, variance=1.0)
    assert {j: kind for j, (kind, _) in found.items()} == expected


def test_tied_covariance_needs_points_for_every_mean():
    found = degenerate_components(torch.full((3,), 1 / 3), torch.eye(10), 12, "tied", 1e-6, 1.0)
    assert sorted(found) == [0, 1, 2] and "12 points for 3 means" in found[0][1]


def test_mean_feature_variance_is_within_plus_between():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    # 3 within on both features, 1 between on the first
    assert mean_feature_variance(torch.tensor([0.5, 0.5]), means, torch.eye(2).expand(2, 2, 2) * 3, "full") == 3.5
    assert mean_feature_variance(torch.tensor([0.5, 0.5]), means, torch.tensor([3.0, 3.0]), "spherical") == 3.5


def test_a_deliberate_reg_covar_is_no_degeneracy():
    # too few points, but reg_covar is of the data's scale: the covariances shrink towards it
    weights, cov = torch.tensor([0.5, 0.5]), torch.eye(3).expand(2, 3, 3).double()
    assert degenerate_components(weights, cov, 4, "full", reg_covar=1e-6, variance=1.0)
    assert not degenerate_components(weights, cov, 4, "full", reg_covar=0.5, variance=1.0)
    assert "model.reg_covar=0.9 (about the features' variance" in remedy({"points"}, "full", 0.93)
    assert remedy({"points"}, "diag", 1.0).startswith("fewer components (k), or model.reg_covar=1 ")


def test_column_checks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5))
    x[:, 1] = 2.0
    x[3, 2] = 1e300
    x[4, 3] = -1e150
    x[:, 4] = 0.0
    x[9, 4] = 1.0  # one 1 among zeros: dominated as well
    assert constant_columns(x) == [1]
    assert dominated_columns(x) == [2, 3, 4]
    # heavy tails are not an extreme value: 1e5 Student-t(2) and log-normal samples
    heavy = np.c_[rng.standard_t(2, size=(100_000, 2)), rng.lognormal(0, 2, size=(100_000, 2))]
    assert dominated_columns(heavy) == [] and constant_columns(heavy) == []
