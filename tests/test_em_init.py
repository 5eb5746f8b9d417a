"""EM's start values: k-means++ and Lloyd against scikit-learn, the init recipe, start-value files."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dgmm_lab.mixture import em
from dgmm_lab.mixture.density import COVARIANCE_TYPES, precision_cholesky_from_covariance
from dgmm_lab.mixture.kmeans import kmeans_plus_plus, lloyd
from dgmm_lab.mixture.start_values import load_start_values


def separated_blobs(seed: int = 0, k: int = 4, n: int = 400, d: int = 3, spread: float = 1.0):
    """(x (n, d), labels): k Gaussian blobs 30 apart, far from the origin."""
    rng = np.random.default_rng(seed)
    centres = 30.0 * np.eye(k, d) + 100.0
    labels = rng.integers(k, size=n)
    return centres[labels] + spread * rng.normal(size=(n, d)), labels


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plus_plus_seeds_every_blob_as_scikit_learn_does(seed):
    x, labels = separated_blobs(seed)
    ours, index = kmeans_plus_plus(torch.as_tensor(x), 4, torch.Generator().manual_seed(seed))
    theirs, their_index = kmeans_plusplus(x, 4, random_state=seed)
    torch.testing.assert_close(ours, torch.as_tensor(x)[index], rtol=0, atol=0)  # the seeds are data points
    assert adjusted_rand_score(labels, nearest(x, ours.numpy())) == 1.0
    assert adjusted_rand_score(nearest(x, theirs), nearest(x, ours.numpy())) == 1.0
    assert len(set(index.tolist())) == len(set(their_index.tolist())) == 4


@pytest.mark.parametrize("method", ["k-means++", "random_from_data"])
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_chosen_point_starts_put_each_component_on_one_point_as_scikit_learn(method, cov_type):
    """scikit-learn's _initialize_parameters: responsibility 1 on the k chosen points only,
    so every mean is a data point and (but for tied, see stats_from_responsibilities) every
    covariance is reg_covar."""
    x, _ = separated_blobs()
    xt = torch.as_tensor(x)
    resp = em.initial_responsibilities(xt, 4, method, torch.Generator().manual_seed(0))
    assert resp.sum().item() == 4 and torch.equal(resp.sum(0), torch.ones(4))
    chosen = resp.argmax(0)
    assert len(set(chosen.tolist())) == 4 and torch.equal(resp[chosen, torch.arange(4)], torch.ones(4))
    ours = em.initial_mixture(xt, 4, cov_type, method, torch.Generator().manual_seed(0), reg_covar=1e-6)
    torch.testing.assert_close(ours.means, xt[chosen], rtol=1e-12, atol=1e-9)
    sk = SkGaussianMixture(4, covariance_type=cov_type, init_params=method)
    sk._initialize_parameters(x, np.random.RandomState(0))
    np.testing.assert_allclose(sk.means_, x[nearest(sk.means_, x)], rtol=1e-12)  # data points too
    if cov_type != "tied":
        # scikit-learn cancels x^2 - mu^2 on uncentred data (x near 100): 1e-10 of rounding
        np.testing.assert_allclose(ours.covariances.numpy(), sk.covariances_, rtol=0, atol=1e-10)
    else:  # ours: the chosen points alone, so reg_covar; scikit-learn's uses every sample's x x^T
        np.testing.assert_allclose(ours.covariances.numpy(), 1e-6 * np.eye(3), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("tol", [1e-4, 0.0, 0.5])
def test_lloyd_stops_where_scikit_learn_kmeans_stops(tol):
    """From the same start, Lloyd with scikit-learn's tol (relative to the mean feature
    variance) gives KMeans' centres and labels; overlapping blobs need several updates."""
    x, _ = separated_blobs(seed=3, spread=12.0, n=600)
    start = x[[0, 1, 2, 3]]
    sk = KMeans(4, init=start, n_init=1, tol=tol, max_iter=300, algorithm="lloyd").fit(x)
    centres, labels = lloyd(torch.as_tensor(x), torch.as_tensor(start), tol=tol)
    assert sk.n_iter_ > 2
    np.testing.assert_array_equal(labels.numpy(), sk.labels_)
    np.testing.assert_allclose(centres.numpy(), sk.cluster_centers_, rtol=1e-10)
    inertia = ((x - centres.numpy()[labels.numpy()]) ** 2).sum()
    assert inertia == pytest.approx(sk.inertia_, rel=1e-10)


def test_kmeans_init_is_kmeans_to_convergence():
    x, labels = separated_blobs(seed=1, spread=3.0)
    resp = em.initial_responsibilities(torch.as_tensor(x), 4, "kmeans", torch.Generator().manual_seed(0))
    sk = KMeans(4, n_init=1, random_state=0).fit(x)
    assert adjusted_rand_score(sk.labels_, resp.argmax(1).numpy()) == 1.0
    assert adjusted_rand_score(labels, resp.argmax(1).numpy()) == 1.0


@pytest.mark.parametrize("method", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_initial_mixture_is_responsibilities_statistics_m_step(method, cov_type):
    x = torch.as_tensor(separated_blobs(spread=8.0)[0])
    shift = x.mean(0)
    resp = em.initial_responsibilities(x, 4, method, torch.Generator().manual_seed(5))
    expected = em.m_step(em.stats_from_responsibilities(x, resp, shift, cov_type), shift, cov_type, 1e-4)
    got = em.initial_mixture(x, 4, cov_type, method, torch.Generator().manual_seed(5), reg_covar=1e-4)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    # restarts: the one with the highest mean log-likelihood, drawn from the same stream
    g = torch.Generator().manual_seed(6)
    restarts = [em.initial_mixture(x, 4, cov_type, method, g, reg_covar=1e-4) for _ in range(3)]
    scores = [float(r.mixture(cov_type).log_prob(x).mean()) for r in restarts]
    best = em.initial_mixture(x, 4, cov_type, method, torch.Generator().manual_seed(6), reg_covar=1e-4, n_init=3)
    assert torch.equal(best.means, restarts[int(np.argmax(scores))].means)


def test_em_step_in_batches_equals_one_batch():
    x = torch.as_tensor(separated_blobs(spread=8.0)[0])
    start = em.initial_mixture(x, 4, "full", "kmeans", torch.Generator().manual_seed(0)).mixture("full")
    one, ll_one, logp_one = em.em_step(x, start, x.mean(0))
    many, ll_many, logp_many = em.em_step(x, start, x.mean(0), batch_size=37)
    torch.testing.assert_close(many.covariances, one.covariances, rtol=1e-10, atol=1e-12)
    assert ll_many == pytest.approx(ll_one, rel=1e-12) and logp_one.shape == (len(x),)
    torch.testing.assert_close(logp_many, logp_one, rtol=1e-12, atol=1e-12)
    assert ll_one == pytest.approx(float(start.log_prob(x).mean()), rel=1e-12)


# --------------------------------------------------------------------------- start-value files


def test_start_values_are_read_and_converted(tmp_path):
    covariances = np.stack([np.eye(2) * v for v in (1.0, 2.0, 3.0)])
    np.savez(tmp_path / "s.npz", weights=np.full(3, 1 / 3), means=np.zeros((3, 2)), covariances=covariances)
    values = load_start_values(str(tmp_path / "s.npz"), 3, 2, "full")
    assert sorted(values) == ["means", "precisions_cholesky", "weights"]
    expected = precision_cholesky_from_covariance(torch.as_tensor(covariances), "full")
    torch.testing.assert_close(values["precisions_cholesky"], expected)
    torch.save({"means": torch.ones(3, 2)}, tmp_path / "s.pt")
    assert torch.equal(load_start_values(str(tmp_path / "s.pt"), 3, 2, "diag")["means"],
                       torch.ones(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("content, cov_type, expected", [
    (None, "diag", "no such file"),
    ({"rubbish": np.zeros(3)}, "diag", "holds ['rubbish']; allowed: any of weights, means, and precisions or covariances"),
    ({"precisions": np.ones((3, 2)), "covariances": np.ones((3, 2))}, "diag", "and precisions or covariances"),
    ({"means": np.zeros((2, 2))}, "diag", "means has shape (2, 2); allowed: finite values of shape (3, 2)"),
    ({"means": np.full((3, 2), np.nan)}, "diag", "means has shape (3, 2) and non-finite values"),
    ({"weights": np.array([0.5, 0.6, -0.1])}, "diag", "weights must be positive and sum to 1"),
    ({"covariances": np.array([1.0, -1.0, 2.0])}, "spherical", "covariance of component 1 is not positive"),
    ({"covariances": np.stack([np.eye(2), -np.eye(2), np.eye(2)])}, "full", "component 1 is not positive definite"),
    ({"precisions": np.array([1.0, 0.0, 2.0])}, "spherical", "precisions must be positive"),
])
def test_bad_start_values_raise_value_error_naming_the_file(content, cov_type, expected, tmp_path):
    path = tmp_path / "start.npz"
    if content is not None:
        np.savez(path, **content)
    with pytest.raises(ValueError) as err:
        load_start_values(str(path), 3, 2, cov_type)
    assert f"model.init_from={str(path)!r}" in str(err.value) and expected in str(err.value)


def test_entropy_selection_keeps_the_evenly_weighted_start_where_the_likeliest_merges_two_clusters():
    """Three clusters of 1000 points: two overlapping normals and a wide uniform bar.  The
    likeliest of 12 fits merges the pair and splits the bar in two (weights 0.22/0.67/0.11);
    ``init_selection="entropy"`` keeps the likeliest of the evenly weighted starts, which
    separates the pair."""
    from sklearn.metrics import adjusted_rand_score

    from dgmm_lab.mixture.estimator import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 1000), rng.normal(2.5, 1, 1000), rng.uniform(20, 60, 1000)])[:, None]
    y = np.repeat([0, 1, 2], 1000)
    fits = {s: GaussianMixture(3, n_init=12, init_params="random_from_data", random_state=0, init_selection=s).fit(x)
            for s in ("likelihood", "entropy")}
    likely, even = fits["likelihood"], fits["entropy"]
    np.testing.assert_array_equal(likely.init_lower_bounds_, even.init_lower_bounds_)  # the same 12 starts
    assert likely.lower_bound_ == likely.init_lower_bounds_.max()
    # the likeliest of the starts within 1% of the most even one
    eff, bounds = even.init_effective_components_, even.init_lower_bounds_
    even_enough = np.flatnonzero(eff >= 0.99 * eff.max())
    assert len(even_enough) > 1 and even.best_init_ == even_enough[bounds[even_enough].argmax()]
    assert np.exp(-(even.weights_ * np.log(even.weights_)).sum()) == pytest.approx(eff[even.best_init_], rel=1e-12)
    assert even.lower_bound_ < likely.lower_bound_
    assert adjusted_rand_score(y, even.predict(x)) > adjusted_rand_score(y, likely.predict(x)) + 0.2


def test_the_lightning_em_keeps_the_start_init_selection_says(tmp_path):
    """model=em_gmm selects among its n_init starts (after init_em_steps on the sample) with the
    estimator's rule: on the merging data above, entropy keeps a start that separates the pair."""
    from conftest import train_in_process

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 1000), rng.normal(2.5, 1, 1000), rng.uniform(20, 60, 1000)])[:, None]
    np.savez(tmp_path / "d.npz", X=x, y=np.repeat([0, 1, 2], 1000))
    runs = {s: train_in_process(["model=em_gmm", "data=array", f"data.path={tmp_path / 'd.npz'}", "data.label=y", "k=3",
                                 "model.n_init=12", "model.init_params=random_from_data", f"model.init_selection={s}",
                                 "trainer.enable_progress_bar=false", "logger=csv"], tmp_path / s)
            for s in ("likelihood", "entropy")}
    assert runs["entropy"]["start/ari"] > runs["likelihood"]["start/ari"] + 0.2  # measured 0.76 against 0.47
    assert runs["entropy"]["test/ari"] > runs["likelihood"]["test/ari"] + 0.2    # 0.78 against 0.50
