"""EM against scikit-learn, mini-batch against full batch, degenerate data, bad input."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dgmm_lab import GaussianMixture
from dgmm_lab.mixture import em
from dgmm_lab.mixture.density import COVARIANCE_TYPES
from helpers.em_data import DATASETS, shared_init


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_parity_with_sklearn(name, cov_type):
    x = DATASETS[name]
    init = shared_init(x, 3, cov_type)
    kwargs = dict(covariance_type=cov_type, tol=1e-4, max_iter=40, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, **kwargs).fit(x)
        ours = GaussianMixture(3, **kwargs).fit(x)
    assert ours.n_iter_ == sk.n_iter_ and ours.converged_ == sk.converged_
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, attr), getattr(sk, attr), rtol=1e-6, atol=1e-10)
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-6)
    np.testing.assert_array_equal(ours.predict(x), sk.predict(x))
    assert ours.bic(x) == pytest.approx(sk.bic(x), rel=1e-6)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_mini_batch_equals_full_batch(cov_type):
    x = DATASETS["blobs"]
    init = shared_init(x, 3, cov_type)
    full = GaussianMixture(3, covariance_type=cov_type, max_iter=5, tol=0, **init)
    mini = GaussianMixture(3, covariance_type=cov_type, max_iter=5, tol=0, batch_size=97, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full.fit(x)
        mini.fit(x)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(mini, attr), getattr(full, attr), rtol=1e-8, atol=1e-12)
    assert mini.lower_bound_ == pytest.approx(full.lower_bound_, rel=1e-12)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.9])
def test_full_second_moments_gathered_or_dense_equal_the_definition(zero_fraction):
    # 0.9 zeros takes the per-component gather, none the dense chunked product
    gen = torch.Generator().manual_seed(0)
    centred = torch.randn(1000, 5, generator=gen, dtype=torch.float64)
    resp = torch.rand(1000, 4, generator=gen, dtype=torch.float64)
    resp[torch.rand(1000, 4, generator=gen) < zero_fraction] = 0.0
    expected = torch.einsum("nk,nd,ne->kde", resp, centred, centred)
    got = em.full_second_moments(centred, resp, chunk_size=128)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float64])
def test_the_e_step_loop_never_waits_on_the_device(cov_type, compute_dtype):
    """The E-step over batches as it runs off the CPU, here on torch's "meta" device: tensors
    without data, where any host synchronisation (.item(), bool(tensor), float(tensor),
    nonzero, a copy to the host) raises.  Several batches and chunks, as on a GPU."""
    k, d = 3, 5
    factor = {"full": torch.eye(d).expand(k, d, d), "tied": torch.eye(d), "diag": torch.ones(k, d),
              "spherical": torch.ones(k)}[cov_type]
    meta = dict(device="meta", dtype=torch.float64)
    mixture = em.MixtureDensity(torch.empty(k, **meta), torch.empty(k, d, **meta), factor.to(**meta), cov_type)
    stats = em.SufficientStats.zeros(k, d, cov_type, device="meta")
    for batch in torch.empty(3000, d, **meta).split(1000):
        log_p = em.accumulate(stats, batch, mixture, torch.empty(d, **meta), compute_dtype, chunk_size=256)
        assert log_p.shape == (1000,)
    assert stats.sxx.shape == {"full": (k, d, d), "tied": (d, d)}.get(cov_type, (k, d))
    with pytest.raises(RuntimeError, match="meta"):  # the check itself can fail
        bool(stats.nk.sum() > 0)


def test_float32_products_keep_the_likelihood():
    x = DATASETS["blobs"]
    init = shared_init(x, 3, "full")
    f64 = GaussianMixture(3, tol=1e-6, max_iter=50, **init).fit(x)
    f32 = GaussianMixture(3, tol=1e-6, max_iter=50, compute_dtype="float32", **init).fit(x)
    assert abs(f32.lower_bound_ - f64.lower_bound_) < 1e-4


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_float32_input_computes_and_answers_in_float32_as_scikit_learn(cov_type):
    """scikit-learn's convention (since 1.7): the input's dtype is the fit's and the answers';
    our statistics are summed in float64 all the same, so the likelihood matches float64's."""
    x = DATASETS["blobs"]
    x32 = x.astype(np.float32)
    # float32 start values: scikit-learn promotes its answers to float64 for float64 ones
    init = {key: value.astype(np.float32) for key, value in shared_init(x, 3, cov_type).items()}
    kwargs = dict(covariance_type=cov_type, tol=1e-6, max_iter=50, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, **kwargs).fit(x32)
        ours = GaussianMixture(3, **kwargs).fit(x32)
        f64 = GaussianMixture(3, **kwargs).fit(x)
    for attr in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(ours, attr).dtype == getattr(sk, attr).dtype == np.float32, attr
        assert getattr(f64, attr).dtype == np.float64, attr
    for method in ("score_samples", "predict_proba"):
        assert getattr(ours, method)(x32).dtype == getattr(sk, method)(x32).dtype == np.float32
    assert ours.score_samples(x).dtype == sk.score_samples(x).dtype == np.float64  # either in float64: float64
    assert f64.score_samples(x32).dtype == np.float64
    # the blobs sit near 100: float32 sums lose digits (scikit-learn's diag: 1e-3 nats off)
    assert abs(ours.lower_bound_ - f64.lower_bound_) < 1e-4
    assert abs(ours.lower_bound_ - f64.lower_bound_) <= abs(sk.lower_bound_ - f64.lower_bound_) + 1e-6
    assert GaussianMixture(3, compute_dtype="float64", **kwargs).fit(x32).means_.dtype == np.float32


def test_restarts_run_in_one_pass_and_each_equals_its_own_fit():
    """n_init restarts share each pass over the data; each restart's result is the one it
    gets alone from the same start (different iteration counts included), the best is kept."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(4.0 * c, 1.0 + c / 3, size=(400, 3)) for c in range(4)])
    est = GaussianMixture(4, n_init=4, init_params="random", random_state=0, tol=1e-6, max_iter=200)
    est._check_parameters(len(x))
    xt, generator = torch.as_tensor(x), torch.Generator().manual_seed(0)
    shift = est._mean(xt)
    starts = [est._initial_mixture(xt, shift, generator) for _ in range(4)]
    together = est._run_em(xt, starts, shift)
    alone = [est._run_em(xt, [start], shift)[0] for start in starts]
    assert len({run["n_iter"] for run in together}) > 1  # restarts stop at different iterations
    for a, b in zip(together, alone):
        assert (a["n_iter"], a["converged"], a["lower_bound"]) == (b["n_iter"], b["converged"], b["lower_bound"])
        assert torch.equal(a["mixture"].means, b["mixture"].means)
    fitted = est.fit(x)
    assert fitted.lower_bound_ == max(run["lower_bound"] for run in alone)


def test_start_values_from_a_sample_of_rows():
    """k-means on 60 of 3000 rows finds well-separated clusters as well as on all of them."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(10.0 * c, 1.0, size=(1000, 2)) for c in range(3)])
    sampled = GaussianMixture(3, init_max_samples=60, random_state=0).fit(x)
    full = GaussianMixture(3, random_state=0).fit(x)
    assert sampled.lower_bound_ == pytest.approx(full.lower_bound_, abs=1e-6)
    np.testing.assert_allclose(np.sort(sampled.means_[:, 0]), [0, 10, 20], atol=0.2)
    every_row = GaussianMixture(3, init_max_samples=3000, random_state=0, max_iter=1).fit(x)
    assert every_row.lower_bound_ == GaussianMixture(3, random_state=0, max_iter=1).fit(x).lower_bound_
    with pytest.raises(ValueError, match="init_max_samples=2 must be None or an integer >= n_components=3"):
        GaussianMixture(3, init_max_samples=2).fit(x)


def test_own_init_recovers_clusters_and_restarts_keep_the_best():
    x = DATASETS["blobs"]
    one = GaussianMixture(3, random_state=0).fit(x)
    many = GaussianMixture(3, n_init=4, random_state=0).fit(x)
    sk = SkGaussianMixture(3, n_init=4, random_state=0).fit(x)
    assert many.lower_bound_ >= one.lower_bound_ - 1e-12
    assert many.lower_bound_ == pytest.approx(sk.lower_bound_, abs=1e-3)
    for method in ("k-means++", "random", "random_from_data"):
        gm = GaussianMixture(3, init_params=method, random_state=0, max_iter=300).fit(x)
        assert np.isfinite(gm.lower_bound_)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_degenerate_data_gives_no_nan(cov_type):
    rng = np.random.default_rng(0)
    duplicated = np.repeat(rng.normal(size=(5, 2)), 40, axis=0)
    constant_feature = np.c_[rng.normal(size=(200, 2)), np.full(200, 3.0)]
    for x, k in ((duplicated, 8), (constant_feature, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(k, covariance_type=cov_type, reg_covar=1e-6, random_state=0).fit(x)
        for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            assert np.all(np.isfinite(getattr(gm, attr))), attr
        assert np.isfinite(gm.score(x))


def test_emptied_component_is_reseeded_with_a_warning():
    x = DATASETS["blobs"]
    k = 3
    means = np.vstack([x[:2].mean(0, keepdims=True) * 0 + x.mean(0), x[:1], np.full((1, 3), 1e4)])
    init = dict(weights_init=np.full(k, 1 / k), means_init=means,
                precisions_init=np.stack([np.eye(3)] * k))
    with pytest.warns(UserWarning, match="lost all their mass"):
        gm = GaussianMixture(k, max_iter=20, **init).fit(x)
    assert np.all(np.isfinite(gm.means_)) and gm.weights_.min() > 0
    assert np.abs(gm.means_[2]).max() < 1e3  # moved off the far-away start


def test_singular_covariance_is_jittered_then_reported(caplog):
    from dgmm_lab.mixture.covariances import stable_precision_cholesky

    x = np.zeros((20, 2))
    x[:, 0] = np.arange(20)  # second feature constant: singular covariance without reg_covar
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(1, reg_covar=0.0).fit(x)
    assert "retrying with jitter" in caplog.text
    assert np.all(np.isfinite(gm.precisions_cholesky_))
    indefinite = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError, match=r"component 1 .*increase reg_covar"):
        stable_precision_cholesky(indefinite, "full", reg_covar=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(n_components=0), "n_components=0"),
    (dict(covariance_type="banana"), "covariance_type='banana'"),
    (dict(init_params="magic"), "init_params='magic'"),
])
def test_bad_parameters_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**{"n_components": 2, **bad}).fit(DATASETS["blobs"])


def test_bad_input_raises_value_error():
    x = DATASETS["blobs"].copy()
    gm = GaussianMixture(2, random_state=0).fit(x)
    with pytest.raises(ValueError, match="features"):
        gm.predict(x[:, :2])
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(x)
    x[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        GaussianMixture(2).fit(x)


def test_estimator_accepts_tensors_and_samples():
    x = torch.as_tensor(DATASETS["blobs"])
    gm = GaussianMixture(3, random_state=0).fit(x)
    samples, labels = gm.sample(5000)
    assert samples.shape == (5000, 3) and set(np.unique(labels)) <= {0, 1, 2}
    assert gm.predict_proba(x).sum(1) == pytest.approx(np.ones(len(x)))


def test_sklearn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    failures = check_estimator(GaussianMixture(2, max_iter=20), on_fail=None)
    failed = [f for f in failures if f["status"] == "failed"]
    assert not failed, [(f["check_name"], str(f["exception"])[:200]) for f in failed]


@pytest.mark.parametrize("cov_type, key", [("full", "precisions"), ("diag", "covariances")])
def test_lightning_module_from_given_start_values_matches_sklearn(cov_type, key, tmp_path):
    """model.init_from: the LightningModule, over mini-batches, from the start values of
    a file, runs the same EM iterations as scikit-learn from the same values."""
    from hydra.utils import instantiate

    from conftest import FAST, compose_config, load_model, train_in_process

    overrides = ["k=3", f"covariance={cov_type}", "data.dim=3", "model.tol=0", "model.max_iter=4",
                 "trainer.max_epochs=4", *FAST]
    datamodule = instantiate(compose_config(overrides, tmp_path).data)
    x = datamodule.tensors("train")[0].double().numpy()
    init = shared_init(x, 3, cov_type, seed=1)
    sk_values = {"precisions": init["precisions_init"],
                 "covariances": SkGaussianMixture(3, covariance_type=cov_type, max_iter=1, random_state=1)
                 .fit(x).covariances_}
    np.savez(tmp_path / "start.npz", weights=init["weights_init"], means=init["means_init"], **{key: sk_values[key]})
    train_in_process([*overrides, f"model.init_from={tmp_path / 'start.npz'}"], tmp_path / "given")
    _, model = load_model(tmp_path / "given")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=4, **init).fit(x)
    np.testing.assert_allclose(model.mixture.weights.numpy(), sk.weights_, rtol=1e-6)
    np.testing.assert_allclose(model.means.numpy(), sk.means_, rtol=1e-6)
    np.testing.assert_allclose(model.mixture.covariances.numpy(), sk.covariances_, rtol=1e-6)


@pytest.mark.parametrize("content, expected", [
    ({"means": np.zeros((2, 2))}, "means has shape (2, 2); allowed: finite values of shape (3, 2)"),
    ({"weights": np.array([0.5, 0.6, -0.1])}, "weights must be positive and sum to 1"),
    ({"rubbish": np.zeros(3)}, "allowed: any of weights, means, and precisions or covariances"),
    (None, "no such file"),
])
def test_bad_start_value_file_is_one_line(content, expected, tmp_path):
    from conftest import FAST, run_cli

    path = tmp_path / "start.npz"
    if content is not None:
        np.savez(path, **content)
    result = run_cli(["k=3", f"model.init_from={path}", *FAST, f"paths.log_dir={tmp_path}"])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("dgmm_lab: error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_start_metrics_are_those_of_the_start_values(tmp_path):
    """start/acc, nmi, ari: the clustering of the start values on the initialisation sample
    (here the whole 2100-point training split), before any EM iteration."""
    from hydra.utils import instantiate

    from conftest import FAST, compose_config, train_in_process
    from dgmm_lab.metrics import clustering_metrics
    from dgmm_lab.mixture.density import MixtureDensity

    overrides = ["k=3", "covariance=diag", "trainer.max_epochs=2", *FAST]
    datamodule = instantiate(compose_config(overrides, tmp_path).data)
    x, y = datamodule.tensors("train")
    # a poor start: the first three points as means, unit variances
    means, covariances = x[:3].double(), torch.ones(3, x.shape[1], dtype=torch.float64)
    np.savez(tmp_path / "start.npz", weights=np.full(3, 1 / 3), means=means.numpy(), covariances=covariances.numpy())
    start = MixtureDensity.from_covariances(torch.full((3,), 1 / 3, dtype=torch.float64), means, covariances, "diag")
    expected = clustering_metrics(y.numpy(), start.predict(x.double()).numpy())
    m = train_in_process([*overrides, f"model.init_from={tmp_path / 'start.npz'}"], tmp_path / "run")
    for name in ("acc", "nmi", "ari"):
        assert m[f"start/{name}"] == pytest.approx(expected[name], abs=1e-12)
    assert expected["acc"] < 0.9 < m["test/acc"]  # the start was poor; EM fixed it
