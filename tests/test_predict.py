"""``python -m dgmm_lab.predict`` and ``python -m dgmm_lab.sample`` (issue 16): their files
equal the Python API's answers, the test split is the default input, and every bad input is
one ``dgmm_lab: error:`` line with exit status 2 and nothing written."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dgmm_lab
from conftest import FAST, ROOT, load_model, train_in_process
from dgmm_lab import predict as predict_cli
from dgmm_lab import sample as sample_cli

COLUMNS = ["a", "b", "c"]


def blobs(n: int, seed: int = 0, p=None):
    """Three Gaussian blobs in 3-D (labels 0, 1, 2 with probabilities p), in odd units."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 3.0], [0.0, 8.0, -3.0]])
    y = rng.choice(3, size=n, p=p)
    return centres[y] + rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [100.0, -5.0, 0.0], y


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {name: np.array([r[i] for r in rows[1:]]) for i, name in enumerate(rows[0])}


def run_module(module: str, args: list[str], cwd=ROOT):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", f"dgmm_lab.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """EM, K=3, on a CSV with columns a, b, c and a label y."""
    root = tmp_path_factory.mktemp("csv_run")
    x, y = blobs(900)
    write_csv(root / "train.csv", [*COLUMNS, "y"], [[*r, int(l)] for r, l in zip(x.tolist(), y)])
    train_in_process(["data=array", f"data.path={root / 'train.csv'}", "data.label=y", "k=3", *FAST],
                     root / "run")
    return root


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory):
    """EM on the normals (label 0) of an .npz; labels 1 and 2 are the anomalies (10%): the
    threshold is the 90% quantile of the validation normals' anomaly scores."""
    root = tmp_path_factory.mktemp("anomaly_run")
    x, y = blobs(1200, seed=1, p=[0.9, 0.05, 0.05])
    np.savez(root / "train.npz", X=x, y=y)
    train_in_process(["data=array", f"data.path={root / 'train.npz'}", "data.label=y", "data.normal_label=0",
                      "k=2", *FAST], root / "run")
    return root


@pytest.fixture(scope="module")
def mdn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mdn_run")
    train_in_process(["experiment=mdn_bishop", "data.n_samples=1000", *FAST], root / "run")
    return root


# --------------------------------------------------------------------------- predict

def test_csv_round_trip_equals_the_python_api(csv_run, tmp_path):
    """Columns picked by name: the new file has them in another order, with an extra one."""
    x, _ = blobs(250, seed=5)
    write_csv(tmp_path / "new.csv", ["note", "c", "a", "b"],
              [[f"row{i}", r[2], r[0], r[1]] for i, r in enumerate(x.tolist())])
    result = run_module("predict", [f"ckpt_path={csv_run / 'run'}", f"input={tmp_path / 'new.csv'}",
                                    f"output={tmp_path / 'out.csv'}", "batch_size=64"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    out = read_csv(tmp_path / "out.csv")
    assert list(out) == ["component", "probability", "score"]
    model = dgmm_lab.load(csv_run / "run")
    assert model.transform.columns == COLUMNS
    np.testing.assert_array_equal(out["component"].astype(int), model.predict(x))
    np.testing.assert_array_equal(out["score"].astype(float), model.score_samples(x))  # repr: exact
    proba = model.predict_proba(x)
    np.testing.assert_array_equal(out["probability"].astype(float), proba[np.arange(len(x)), model.predict(x)])


@pytest.mark.parametrize("batches", ["one batch", "many batches"])
def test_input_omitted_scores_the_test_split(batches, csv_run, tmp_path):
    # a new user's 10,000-row test split, more than a batch, once came out as "the input has no rows"
    size = [] if batches == "one batch" else ["batch_size=7"]
    predict_cli.main([f"ckpt_path={csv_run / 'run' / 'checkpoints' / 'last.ckpt'}", f"output={tmp_path / 'test.npz'}",
                      *size])
    out = np.load(tmp_path / "test.npz")
    datamodule, module = load_model(csv_run / "run")
    x, y = datamodule.tensors("test")
    log_p, cluster = module.evaluate_batch(x)
    np.testing.assert_array_equal(out["component"], cluster.numpy())
    np.testing.assert_allclose(out["score"], log_p.double().numpy(), rtol=1e-12)
    np.testing.assert_array_equal(out["label"], y.numpy())
    # and the test split mapped back to raw units gives the same answers through the API
    model = dgmm_lab.load(csv_run / "run" / "checkpoints" / "last.ckpt")
    raw = model.transform.invert(x).numpy()
    np.testing.assert_array_equal(out["component"], model.predict(raw))
    np.testing.assert_allclose(out["score"], model.score_samples(raw), rtol=1e-5, atol=1e-5)


def test_an_anomaly_run_writes_the_flag(anomaly_run, tmp_path):
    x, y = blobs(300, seed=7, p=[0.5, 0.25, 0.25])
    np.savez(tmp_path / "new.npz", X=x)
    predict_cli.main([f"ckpt_path={anomaly_run / 'run'}", f"input={tmp_path / 'new.npz'}",
                      f"output={tmp_path / 'flags.csv'}"])
    out = read_csv(tmp_path / "flags.csv")
    assert list(out) == ["component", "probability", "score", "anomaly_score", "is_anomaly"]
    model = dgmm_lab.load(anomaly_run / "run")
    flags = out["is_anomaly"] == "True"
    np.testing.assert_array_equal(flags, model.is_anomaly(x))
    np.testing.assert_array_equal(out["anomaly_score"].astype(float), model.anomaly_score(x))
    assert flags[y != 0].mean() > 0.9 and flags[y == 0].mean() < 0.3  # the other blobs are far away


def test_npy_input_is_read_batch_by_batch_from_a_memory_map(csv_run, tmp_path, monkeypatch):
    x, _ = blobs(5000, seed=3)
    np.save(tmp_path / "big.npy", x)
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(k.get("mmap_mode")) or real_load(*a, **k))
    seen = []
    model_class = type(dgmm_lab.load(csv_run / "run"))
    real_predict = model_class.predict
    monkeypatch.setattr(model_class, "predict", lambda self, b: seen.append(len(b)) or real_predict(self, b))
    predict_cli.main([f"ckpt_path={csv_run / 'run'}", f"input={tmp_path / 'big.npy'}",
                      f"output={tmp_path / 'big.npz'}", "batch_size=1000"])
    assert loads[0] == "r"
    assert seen == [1000] * 5
    out = real_load(tmp_path / "big.npz")
    model = dgmm_lab.load(csv_run / "run")
    np.testing.assert_array_equal(out["component"], real_predict(model, x))
    np.testing.assert_array_equal(out["score"], model.score_samples(x))


def test_an_mdn_run_writes_the_conditional_mean(mdn_run, tmp_path):
    x = np.linspace(0.05, 0.95, 40)[:, None]
    np.save(tmp_path / "x.npy", x)
    predict_cli.main([f"ckpt_path={mdn_run / 'run'}", f"input={tmp_path / 'x.npy'}", f"output={tmp_path / 'y.csv'}"])
    out = read_csv(tmp_path / "y.csv")
    assert list(out) == ["component", "probability", "mean_0"]
    model = dgmm_lab.load(mdn_run / "run")
    np.testing.assert_array_equal(out["mean_0"].astype(float), model.conditional_mean(x)[:, 0])
    # the test split has y: its log p(y | x) is the score
    predict_cli.main([f"ckpt_path={mdn_run / 'run'}", f"output={tmp_path / 'test.npz'}"])
    assert {"component", "probability", "mean_0", "score"} == set(np.load(tmp_path / "test.npz"))


# --------------------------------------------------------------------------- sample

def test_sample_writes_the_api_draws(csv_run, tmp_path, capsys):
    sample_cli.main([f"ckpt_path={csv_run / 'run'}", "n=64", f"output={tmp_path / 'draws'}", "seed=3"])
    drawn = np.load(tmp_path / "draws" / "samples.npy")
    assert drawn.shape == (64, 3)
    np.testing.assert_array_equal(drawn, dgmm_lab.load(csv_run / "run").sample(64, seed=3))
    labels = np.load(tmp_path / "draws" / "components.npy")
    assert labels.shape == (64,) and set(labels.tolist()) <= {0, 1, 2}
    assert not (tmp_path / "draws" / "samples.png").exists()  # not image data
    assert f"written: {tmp_path / 'draws' / 'samples.npy'}" in capsys.readouterr().out


def test_sample_of_an_mdn_takes_input_rows(mdn_run, tmp_path):
    np.save(tmp_path / "x.npy", np.full((5, 1), 0.45))
    sample_cli.main([f"ckpt_path={mdn_run / 'run'}", "n=30", f"output={tmp_path / 'y'}", f"input={tmp_path / 'x.npy'}"])
    assert np.load(tmp_path / "y" / "samples.npy").shape == (5, 30, 1)


@pytest.mark.slow
def test_sample_of_an_mnist_run_draws_a_png(mnist_dir, tmp_path):
    from PIL import Image

    train_in_process(["data=mnist", f"paths.data_dir={mnist_dir}", "data.limit_train=2000", "data.val_size=500",
                      "data.limit_test=500", "k=4", "covariance=diag", *FAST], tmp_path / "run")
    result = run_module("sample", [f"ckpt_path={tmp_path / 'run'}", "n=40", f"output={tmp_path / 'digits'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = np.load(tmp_path / "digits" / "samples.npy")
    assert drawn.shape[0] == 40 and drawn[0].size == 784
    labels = np.load(tmp_path / "digits" / "components.npy")
    image = Image.open(tmp_path / "digits" / "samples.png")
    per_row = min(16, int(np.bincount(labels, minlength=4).max()))
    assert image.size == (2 + per_row * 30, 2 + 4 * 30)  # one row per component, 28 px + 2 padding


# --------------------------------------------------------------------------- bad input

def bad_cases(root, tmp):
    """(name, module, argv, path that must not be written)"""
    run = root / "run"
    x, _ = blobs(20, seed=9)
    write_csv(tmp / "missing.csv", ["a", "b", "y"], [[*r[:2], 0] for r in x.tolist()])
    np.save(tmp / "four.npy", np.c_[x, x[:, :1]])
    nan = x.copy()
    nan[13, 1] = np.nan
    write_csv(tmp / "nan.csv", COLUMNS, nan.tolist())
    inf = x.copy()
    inf[17, 0] = np.inf
    np.save(tmp / "inf.npy", inf)
    np.save(tmp / "ok.npy", x)
    (tmp / "rows.txt").write_text("1 2 3\n")
    (tmp / "exists.csv").write_text("keep me\n")
    (tmp / "not.ckpt").write_bytes(b"not a checkpoint at all")
    out = tmp / "out.csv"
    return [
        ("no ckpt_path", "predict", [f"input={tmp / 'ok.npy'}", f"output={out}"], out),
        ("not a checkpoint", "predict", [f"ckpt_path={tmp / 'not.ckpt'}", f"input={tmp / 'ok.npy'}", f"output={out}"], out),
        ("no such checkpoint", "predict", [f"ckpt_path={tmp / 'nope.ckpt'}", f"output={out}"], out),
        ("csv lacks a column", "predict", [f"ckpt_path={run}", f"input={tmp / 'missing.csv'}", f"output={out}"], out),
        ("npy count", "predict", [f"ckpt_path={run}", f"input={tmp / 'four.npy'}", f"output={out}"], out),
        ("NaN in csv, 2nd batch", "predict", [f"ckpt_path={run}", f"input={tmp / 'nan.csv'}", f"output={out}",
                                              "batch_size=5"], out),
        ("inf in npy, 4th batch", "predict", [f"ckpt_path={run}", f"input={tmp / 'inf.npy'}", f"output={out}",
                                              "batch_size=5"], out),
        ("unknown input suffix", "predict", [f"ckpt_path={run}", f"input={tmp / 'rows.txt'}", f"output={out}"], out),
        ("unknown output suffix", "predict", [f"ckpt_path={run}", f"input={tmp / 'ok.npy'}",
                                              f"output={tmp / 'out.json'}"], tmp / "out.json"),
        ("output exists", "predict", [f"ckpt_path={run}", f"input={tmp / 'ok.npy'}", f"output={tmp / 'exists.csv'}"],
         None),
        ("unknown key", "predict", [f"ckpt_path={run}", f"output={out}", "inptu=x.csv"], out),
        ("bad batch_size", "predict", [f"ckpt_path={run}", f"output={out}", "batch_size=0"], out),
        ("n < 1", "sample", [f"ckpt_path={run}", "n=0", f"output={tmp / 'draws'}"], tmp / "draws"),
        ("n missing", "sample", [f"ckpt_path={run}", f"output={tmp / 'draws'}"], tmp / "draws"),
        ("no ckpt_path (sample)", "sample", ["n=5", f"output={tmp / 'draws'}"], tmp / "draws"),
        ("input= without an MDN", "sample", [f"ckpt_path={run}", "n=5", f"output={tmp / 'draws'}",
                                             f"input={tmp / 'ok.npy'}"], tmp / "draws"),
    ]


BAD_NAMES = [  # the names of bad_cases, for the test ids
    "no ckpt_path", "not a checkpoint", "no such checkpoint", "csv lacks a column", "npy count",
    "NaN in csv, 2nd batch", "inf in npy, 4th batch", "unknown input suffix", "unknown output suffix",
    "output exists", "unknown key", "bad batch_size", "n < 1", "n missing", "no ckpt_path (sample)",
    "input= without an MDN"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_one_line_and_writes_nothing(name, csv_run, tmp_path, capsys):
    (case,) = [c for c in bad_cases(csv_run, tmp_path) if c[0] == name]
    _, module, argv, must_not_exist = case
    before = sorted(p.name for p in tmp_path.iterdir())
    cli = predict_cli if module == "predict" else sample_cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgmm_lab: error: "), captured.err
    assert captured.out == ""
    if must_not_exist is not None:
        assert not must_not_exist.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial file left either
    assert (tmp_path / "exists.csv").read_text() == "keep me\n"


def test_bad_input_messages_name_the_problem(csv_run, tmp_path, capsys):
    cases = {c[0]: c for c in bad_cases(csv_run, tmp_path)}
    expected = {"csv lacks a column": "lacks the column(s) 'c'", "npy count": "has 4 values per row; the model "
                "was trained on 3", "NaN in csv, 2nd batch": "first in row 13", "inf in npy, 4th batch":
                "first in row 17", "output exists": "add overwrite=true", "n < 1": "n=0 is not allowed",
                "not a checkpoint": "ckpt_path: checkpoint", "unknown output suffix": "allowed: .csv, .npz, .parquet"}
    for name, text in expected.items():
        _, module, argv, _ = cases[name]
        with pytest.raises(SystemExit):
            (predict_cli if module == "predict" else sample_cli).main(argv)
        assert text in capsys.readouterr().err, name


def test_bad_input_from_the_command_line(csv_run, tmp_path):
    """What a user sees: one line on stderr, exit 2, no traceback, no output file."""
    x, _ = blobs(10)
    write_csv(tmp_path / "two.csv", ["a", "b"], x[:, :2].tolist())
    result = run_module("predict", [f"ckpt_path={csv_run / 'run'}", f"input={tmp_path / 'two.csv'}",
                                    f"output={tmp_path / 'o.csv'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("dgmm_lab: error: input=") and "'c'" in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_overwrite_true_replaces_the_output(csv_run, tmp_path):
    x, _ = blobs(30)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "out.npz").write_text("old")
    predict_cli.main([f"ckpt_path={csv_run / 'run'}", f"input={tmp_path / 'x.npy'}", f"output={tmp_path / 'out.npz'}",
                      "overwrite=true"])
    assert len(np.load(tmp_path / "out.npz")["component"]) == 30


def test_parquet_without_a_writer_is_one_line(csv_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict_cli, "parquet_engine", lambda: None)
    with pytest.raises(SystemExit):
        predict_cli.main([f"ckpt_path={csv_run / 'run'}", f"output={tmp_path / 'o.parquet'}"])
    assert "needs the pyarrow or fastparquet package" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_help(capsys):
    predict_cli.main(["--help"])
    sample_cli.main(["-h"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dgmm_lab.predict") and "usage: python -m dgmm_lab.sample" in out


def test_sigterm_during_predict_leaves_no_partial_file_and_says_so_in_one_line(tmp_path):
    import signal
    import time

    train_in_process(["debug=fast"], tmp_path / "run")
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).normal(size=(2_000_000, 2)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "dgmm_lab.predict", f"ckpt_path={tmp_path / 'run'}",
                             f"input={big}", f"output={out / 'p.csv'}"], stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # torch loaded, the model built, batches being written
    assert proc.poll() is None, "predict finished before the signal: make the input larger"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert [line for line in err.splitlines() if line.strip()] == [
        "dgmm_lab: interrupted by SIGTERM; no output was written"], err[-2000:]
    assert list(out.iterdir()) == []


def test_evaluate_takes_a_run_dir(tmp_path):
    metrics = train_in_process(["debug=fast"], tmp_path / "run")
    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", f"ckpt_path={tmp_path / 'run'}",
                         f"output_dir={tmp_path / 'eval'}"], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr[-2000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["test/nll"] == metrics["test/nll"]
