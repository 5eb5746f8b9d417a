"""User data from .npy/.npz/.csv/.mat, clear errors, and the DAGMM anomaly protocol."""

import numpy as np
import pytest
import torch
from scipy.io import savemat

from conftest import FAST, run_cli, train_in_process
from dgmm_lab.data import ArrayDataModule


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=900)
    x = np.array([[0, 0], [6, 0], [0, 6]])[y] + rng.normal(size=(900, 2)) * 3 + 50
    return x, y


@pytest.mark.parametrize("fmt", ["npz", "mat", "csv", "npy"])
def test_formats_load_and_scale_on_training_split(fmt, blobs, tmp_path):
    x, y = blobs
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, X=x, y=y)
    elif fmt == "mat":
        savemat(path, {"X": x, "y": y[:, None]})
    elif fmt == "npy":
        np.save(path, x)
    else:
        np.savetxt(path, np.c_[x, y], delimiter=",", header="a,b,target", comments="")
    dm = ArrayDataModule(str(path), label="target" if fmt == "csv" else None)
    dm.setup()
    xt, yt = dm.tensors("train")
    assert xt.shape[1] == 2 and len(xt) + len(dm.tensors("val")[0]) + len(dm.tensors("test")[0]) == 900
    assert xt.mean(0).abs().max() < 1e-5 and (xt.std(0) - 1).abs().max() < 1e-3
    assert (int(yt.min()) == -1) == (fmt == "npy")


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda p: None, {}, "does not exist"),
    (lambda p: np.savez(p, A=np.ones((5, 2))), {}, "has no key 'X'"),
    (lambda p: np.savez(p, X=np.ones((5, 2))), {"label": "labels"}, "data.label='labels' is not a key"),
    (lambda p: np.savez(p, X=np.array([[1.0, np.nan], [np.inf, 2.0], [1, 1]])), {}, r"2 NaN/inf values, first at rows \[0, 1\]"),
])
def test_clear_errors(make, kwargs, message, tmp_path):
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises((FileNotFoundError, KeyError, ValueError), match=message):
        ArrayDataModule(str(path), **kwargs).setup()


def test_csv_errors_name_the_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,colour,y\n1,red,0\n2,blue,1\n")
    with pytest.raises(ValueError, match="column 'colour' of d.csv is not numeric"):
        ArrayDataModule(str(path), label="y").setup()
    with pytest.raises(KeyError, match="column 'nope' is not in d.csv"):
        ArrayDataModule(str(path), label="nope").setup()


def test_missing_path_is_one_line_error(tmp_path):
    result = run_cli(["data=array", "debug=fast", f"paths.log_dir={tmp_path}"])
    assert result.returncode == 2
    assert "dgmm_lab: error: data.path is required" in result.stderr


def test_anomaly_protocol_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(2000, 4))
    anomalies = rng.normal(size=(100, 4)) * 0.5 + 4.0
    x = np.r_[normal, anomalies]
    y = np.r_[np.zeros(2000), np.ones(100)].astype(int)
    np.savez(tmp_path / "kdd.npz", X=x, y=y)
    dm = ArrayDataModule(str(tmp_path / "kdd.npz"), normal_label=0)
    dm.setup()
    assert int(dm.tensors("train")[1].sum()) == 0 and int(dm.tensors("test")[1].sum()) == 100
    m = train_in_process(["data=array", f"data.path={tmp_path / 'kdd.npz'}", "data.normal_label=0",
                          "k=1", *FAST], tmp_path / "run")
    assert m["test/auroc"] > 0.99 and m["test/f1"] > 0.9


def test_csv_targets_for_mdn(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(600, 1))
    y = np.c_[np.sin(3 * x[:, 0]), x[:, 0] ** 2] + 0.05 * rng.normal(size=(600, 2))
    path = tmp_path / "xy.csv"
    np.savetxt(path, np.c_[x, y], delimiter=",", header="x,y1,y2", comments="")
    m = train_in_process(["model=deep_gmm", "objective=mdn", "backbone=mlp", "data=array", f"data.path={path}",
                          "data.targets=[y1,y2]", "k=2", "covariance=full", *FAST], tmp_path / "run")
    assert np.isfinite(m["test/nll"]) and m["test/nll_per_dim"] == pytest.approx(m["test/nll"] / 2)


@pytest.mark.parametrize("fmt, kwargs, columns", [
    ("npz", {"features": "data", "label": -1}, [0, 1, 2]),   # the example: last column is the label
    ("npz", {"features": "data", "label": 0}, [1, 2, 3]),
    ("mat", {"features": "data", "label": 3}, [0, 1, 2]),
    ("npy", {"label": -1}, [0, 1, 2]),
    ("npy", {"features": [2, 0], "label": 3}, [2, 0]),
])
def test_label_and_features_as_column_indices(fmt, kwargs, columns, tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(200, 4))
    label_col = kwargs["label"] % 4
    table[:, label_col] = rng.integers(3, size=200)
    path = tmp_path / f"d.{fmt}"
    {"npz": lambda: np.savez(path, data=table), "mat": lambda: savemat(path, {"data": table}),
     "npy": lambda: np.save(path, table)}[fmt]()
    dm = ArrayDataModule(str(path), scaling="none", split_seed=1, **kwargs)
    dm.setup()
    x, y = dm.tensors("train")
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1))[60:]  # test 40, val 20 first
    assert dm.column_names == columns
    assert torch.allclose(x.double(), torch.as_tensor(table[order][:, columns]).float().double())
    assert torch.equal(y, torch.as_tensor(table[order, label_col]).long())


def test_targets_as_column_indices(tmp_path):
    table = np.arange(40.0).reshape(10, 4)
    np.savez(tmp_path / "d.npz", data=table)
    dm = ArrayDataModule(str(tmp_path / "d.npz"), features="data", targets=[1, 3], scaling="none",
                         val_fraction=0, test_fraction=0)
    dm.setup()
    x, y = dm.tensors("train")
    assert dm.column_names == [0, 2] and dm.target_dim == 2
    assert torch.equal(y[:, 1] - x[:, 1].double(), torch.ones(10, dtype=torch.float64))  # column 3 = column 2 + 1
