"""dgmm_lab.load: a trained model outside its run scores exactly as the run did."""

import json
import shutil

import numpy as np
import pytest
import torch

import dgmm_lab
from conftest import FAST, load_model, train_in_process
from dgmm_lab.config import ConfigError
from dgmm_lab.metrics import anomaly_metrics, cluster_accuracy

RUNS = {
    "em_gmm": [],
    "nll": ["model=deep_gmm"],
    "dagmm": ["model=deep_gmm", "objective=dagmm", "objective.dropout=0"],
    "vade": ["model=deep_gmm", "objective=vade", "objective.likelihood=gaussian", "objective.pretrain_epochs=1"],
    "mdn": ["model=deep_gmm", "objective=mdn", "data=regression", "backbone=mlp"],
}


@pytest.mark.parametrize("name", RUNS)
def test_loaded_model_scores_the_test_split_as_the_run_did(name, tmp_path):
    metrics = train_in_process([*RUNS[name], *FAST, "k=3"], tmp_path)
    datamodule, _ = load_model(tmp_path)
    x, y = datamodule.tensors("test")  # synthetic data: raw rows = the split (identity transform)
    model = dgmm_lab.load(tmp_path)
    assert model.checkpoint.name.startswith("best-")
    if name == "mdn":
        assert -model.score_samples(x.numpy(), y.numpy()).mean() == pytest.approx(metrics["test/nll"], rel=1e-6)
        with pytest.raises(ValueError, match="objective=mdn scores targets y given x"):
            model.score_samples(x.numpy())
        return
    assert -model.score_samples(x.numpy()).mean() == pytest.approx(metrics["test/nll"], rel=1e-6)
    assert cluster_accuracy(y.numpy(), model.predict(x.numpy())) == metrics["test/acc"]
    proba = model.predict_proba(x.numpy())
    assert proba.shape == (len(x), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba.argmax(1) == model.predict(x.numpy())).mean() > 0.99  # ties aside


def test_a_checkpoint_copied_alone_works_in_a_fresh_directory(tmp_path, monkeypatch):
    train_in_process([*RUNS["nll"], *FAST], tmp_path / "run")
    x = np.random.default_rng(0).normal(size=(50, 2))
    expected = dgmm_lab.load(tmp_path / "run").score_samples(x)
    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt")), alone)
    shutil.rmtree(tmp_path / "run")
    monkeypatch.chdir(alone.parent)
    np.testing.assert_array_equal(dgmm_lab.load("model.ckpt").score_samples(x), expected)


def test_standardised_csv_data_and_the_anomaly_threshold(tmp_path):
    rng = np.random.default_rng(0)
    normal = rng.normal([100.0, -5.0, 0.0], [10.0, 1.0, 0.1], size=(900, 3))
    anomalies = rng.normal([160.0, 0.0, 1.0], [10.0, 1.0, 0.1], size=(60, 3))
    rows = np.vstack([normal, anomalies])
    labels = np.r_[np.zeros(900), np.ones(60)].astype(int)
    path = tmp_path / "data.csv"
    np.savetxt(path, np.column_stack([rows, labels]), delimiter=",", header="a,b,c,y", comments="", fmt="%.10g")
    metrics = train_in_process(["data=array", f"data.path={path}", "data.label=y", "data.normal_label=0",
                                "k=2", *FAST], tmp_path / "run")
    datamodule, _ = load_model(tmp_path / "run")
    model = dgmm_lab.load(tmp_path / "run")
    assert model.transform.columns == ["a", "b", "c"]
    raw_test = model.transform.invert(datamodule.tensors("test")[0]).numpy()  # back in the file's units
    y_test = datamodule.tensors("test")[1].numpy()
    assert anomaly_metrics(y_test, model.anomaly_score(raw_test))["auroc"] == pytest.approx(metrics["test/auroc"],
                                                                                          abs=1e-9)
    # fixed at training time: flags the anomaly rate of the data among validation normals
    info = model.anomaly_info
    assert info["rate"] == pytest.approx(60 / 960) and info["threshold"] == pytest.approx(
        metrics["val/anomaly_threshold"])
    # with the transform's log-determinant, the log-density of the rows in the file's units
    from scipy.stats import multivariate_normal

    est, offset, scale = model.to_estimator(), model.transform.offset.numpy(), model.transform.scale.numpy()
    raw_density = sum(w * multivariate_normal(m * scale + offset, c * np.outer(scale, scale)).pdf(anomalies[:20])
                      for w, m, c in zip(est.weights_, est.means_, est.covariances_))
    np.testing.assert_allclose(model.score_samples(anomalies[:20]) + model.transform.log_det(), np.log(raw_density),
                               rtol=1e-6)
    raw_val = model.transform.invert(datamodule.tensors("val")[0]).numpy()
    assert model.is_anomaly(raw_val).mean() == pytest.approx(info["rate"], abs=2 / len(raw_val))
    assert model.is_anomaly(anomalies).mean() > 0.9
    with pytest.raises(ValueError, match="the input has 2 values per row; the model was trained on 3"):
        model.predict(rows[:, :2])
    bad = rows[:4].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf values in 1 row\(s\), first row 2"):
        model.score_samples(bad)


def test_em_estimator_and_samples_match_the_fitted_mixture(tmp_path):
    train_in_process(["k=3", "data.n_samples=3000", "data.separation=6", "model.tol=0", "trainer.max_epochs=20",
                      *FAST[1:]], tmp_path)
    model = dgmm_lab.load(tmp_path)
    x = np.random.default_rng(1).normal(scale=4, size=(500, 2))
    estimator = model.to_estimator()
    np.testing.assert_array_equal(estimator.predict(model.embed(x)), model.predict(x))
    np.testing.assert_allclose(estimator.score_samples(model.embed(x)), model.score_samples(x), rtol=1e-12)
    n = 30000
    samples = model.sample(n, seed=0)
    assert samples.shape == (n, 2)
    np.testing.assert_array_equal(samples, model.sample(n, seed=0))
    labels = estimator.predict(samples)  # separated components: a sample's component is its label
    for k in range(3):
        mine = samples[labels == k]
        w = estimator.weights_[k]
        assert len(mine) / n == pytest.approx(w, abs=4 * np.sqrt(w * (1 - w) / n))
        se = np.sqrt(np.diag(estimator.covariances_[k]) / len(mine))
        assert np.all(np.abs(mine.mean(0) - estimator.means_[k]) < 5 * se)
        np.testing.assert_allclose(np.cov(mine.T), estimator.covariances_[k], atol=0.1 * np.abs(
            estimator.covariances_[k]).max())


def test_operations_a_model_does_not_offer_say_so(tmp_path):
    train_in_process([*RUNS["mdn"], *FAST], tmp_path / "mdn")
    mdn = dgmm_lab.load(tmp_path / "mdn", which="last")
    assert mdn.checkpoint.name == "last.ckpt"
    x = np.linspace(0, 1, 7)[:, None]
    assert mdn.sample(x, 5).shape == (7, 5, 1) and mdn.conditional_mean(x).shape == (7, 1)
    q = mdn.quantiles(x, [0.1, 0.5, 0.9])
    assert q.shape == (7, 3, 1) and np.all(np.diff(q, axis=1) > 0)
    with pytest.raises(ValueError, match="anomaly_score scores x itself; objective=mdn"):
        mdn.anomaly_score(x)
    with pytest.raises(ValueError, match="objective=mdn does not offer decode"):
        mdn.objective.check_offers("decode")
    with pytest.raises(ValueError, match="to_estimator is for model=em_gmm"):
        mdn.to_estimator()
    with pytest.raises(ValueError, match="complete needs an objective=mdn run on data=mnist_halves"):
        mdn.complete(x, 2)
    with pytest.raises(ValueError, match="is_anomaly needs a run trained under the anomaly protocol"):
        dgmm_lab.load(tmp_path / "mdn").is_anomaly(x)


def test_mdn_quantiles_invert_the_conditional_cdf(tmp_path):
    train_in_process([*RUNS["mdn"], *FAST], tmp_path)
    model = dgmm_lab.load(tmp_path)
    x = np.array([[0.2], [0.45], [0.8]])
    draws = model.sample(x, 20000, seed=3)[..., 0]                         # (3, 20000)
    q = model.quantiles(x, [0.25, 0.5, 0.75])[..., 0]                      # (3, 3)
    empirical = (draws[:, None, :] <= q[:, :, None]).mean(-1)
    np.testing.assert_allclose(empirical, np.broadcast_to([0.25, 0.5, 0.75], (3, 3)), atol=0.015)


def test_checkpoints_without_an_input_description_are_refused_in_one_line(tmp_path):
    train_in_process([*FAST], tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    content = torch.load(ckpt, weights_only=True)
    del content["dgmm_lab_inputs"]
    torch.save(content, tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match="is of an older layout"):
        dgmm_lab.load(tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match="which='first' is not allowed; allowed: best, last"):
        dgmm_lab.load(tmp_path, which="first")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        dgmm_lab.load(tmp_path / "empty")
    assert json.loads((tmp_path / "metrics.json").read_text())  # the run itself is untouched


@pytest.mark.slow
def test_vade_samples_are_images_in_grey_levels(mnist_dir, tmp_path):
    train_in_process(["model=deep_gmm", "objective=vade", "objective.likelihood=bernoulli", "data=mnist",
                      "data.flatten=true", f"data.data_dir={mnist_dir}",
                      "data.limit_train=1000", "data.val_size=200", "data.limit_test=200", "objective.pretrain_epochs=1",
                      "k=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path)
    model = dgmm_lab.load(tmp_path)
    images = model.sample(16, seed=0)
    assert images.shape == (16, 784) and images.min() >= 0 and images.max() <= 255 and images.std() > 1
    datamodule, _ = load_model(tmp_path)
    grey = np.round(datamodule.tensors("test")[0].numpy() * 255).reshape(-1, 28, 28)  # as torchvision holds them
    clusters = model.predict(grey)
    assert clusters.shape == (200,) and len(set(clusters)) > 1


@pytest.mark.slow
def test_mnist_halves_completions_keep_the_top_half_and_draw_bottom_halves(mnist_dir, tmp_path):
    train_in_process(["experiment=mdn_mnist_halves", f"data.data_dir={mnist_dir}", "data.limit_train=1000",
                      "data.val_size=200", "data.limit_test=100", "k=3", "trainer.max_epochs=1",
                      "trainer.enable_progress_bar=false"], tmp_path)
    model = dgmm_lab.load(tmp_path)
    datamodule, _ = load_model(tmp_path)
    top = np.round(datamodule.tensors("test")[0][:5].numpy() * 255)            # (5, 1, 14, 28) grey levels
    images = model.complete(top, 3, seed=0)
    assert images.shape == (5, 3, 28, 28) and images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(images[:, :, :14], np.broadcast_to(top.reshape(5, 1, 14, 28), (5, 3, 14, 28)))
    assert images[:, :, 14:].std() > 1 and not np.allclose(images[:, 0, 14:], images[:, 1, 14:])
