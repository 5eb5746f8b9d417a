"""The density evaluator against scipy and scikit-learn, in float64."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dgmm_lab.mixture.density import (
    COVARIANCE_TYPES,
    MixtureDensity,
    covariance_from_precision_cholesky,
    precision_cholesky_from_precision,
)


def random_mixture(cov_type: str, k: int = 4, d: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(scale=3, size=(k, d))
    if cov_type == "full":
        a = rng.normal(size=(k, d, d))
        cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    elif cov_type == "tied":
        a = rng.normal(size=(d, d))
        cov = a @ a.T + 0.5 * np.eye(d)
    elif cov_type == "diag":
        cov = rng.uniform(0.3, 2.0, size=(k, d))
    else:
        cov = rng.uniform(0.3, 2.0, size=k)
    return weights, means, cov


def dense_covariances(cov, cov_type, k, d):
    if cov_type == "full":
        return cov
    if cov_type == "tied":
        return np.repeat(cov[None], k, 0)
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


def ours(weights, means, cov, cov_type) -> MixtureDensity:
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return MixtureDensity.from_covariances(t(weights), t(means), t(cov), cov_type)


def sklearn_with(weights, means, cov, cov_type) -> SkGaussianMixture:
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    gm = SkGaussianMixture(len(weights), covariance_type=cov_type)
    gm.weights_, gm.means_, gm.covariances_ = weights, means, cov
    gm.precisions_cholesky_ = _compute_precision_cholesky(cov, cov_type)
    return gm


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_log_prob_matches_scipy_and_sklearn(cov_type):
    k, d = 4, 3
    weights, means, cov = random_mixture(cov_type, k, d)
    x = np.random.default_rng(1).normal(scale=4, size=(500, d))
    dense = dense_covariances(cov, cov_type, k, d)
    scipy_log_p = logsumexp(
        np.stack([np.log(w) + multivariate_normal(m, c).logpdf(x)
                  for w, m, c in zip(weights, means, dense)], 1), axis=1)
    mixture = ours(weights, means, cov, cov_type)
    log_p = mixture.log_prob(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(log_p, scipy_log_p, rtol=1e-10, atol=1e-10)
    sk = sklearn_with(weights, means, cov, cov_type)
    np.testing.assert_allclose(log_p, sk.score_samples(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mixture.responsibilities(torch.as_tensor(x)).numpy(),
                               sk.predict_proba(x), rtol=1e-9, atol=1e-12)
    assert mixture.bic(torch.as_tensor(x)) == pytest.approx(sk.bic(x), rel=1e-10)
    assert mixture.aic(torch.as_tensor(x)) == pytest.approx(sk.aic(x), rel=1e-10)
    assert mixture.n_parameters() == sk._n_parameters()


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_precision_and_covariance_round_trip(cov_type):
    weights, means, cov = random_mixture(cov_type)
    mixture = ours(weights, means, cov, cov_type)
    back = covariance_from_precision_cholesky(mixture.precisions_cholesky, cov_type).numpy()
    np.testing.assert_allclose(back, cov, rtol=1e-10)
    p = mixture.precisions_cholesky
    precision = p.pow(2) if cov_type in ("diag", "spherical") else p @ p.transpose(-1, -2)
    again = precision_cholesky_from_precision(precision, cov_type)
    np.testing.assert_allclose(again.numpy(), p.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_samples_reproduce_weights_means_and_covariances(cov_type):
    k, d, n = 3, 2, 200_000
    weights, means, cov = random_mixture(cov_type, k, d, seed=3)
    mixture = ours(weights, means, cov, cov_type)
    x, labels = mixture.sample(n, torch.Generator().manual_seed(0))
    counts = np.bincount(labels.numpy(), minlength=k) / n
    # weights: binomial standard error sqrt(w(1-w)/n) < 0.0012; allow 5 of them
    np.testing.assert_allclose(counts, weights, atol=0.006)
    dense = dense_covariances(cov, cov_type, k, d)
    for j in range(k):
        xj = x[labels == j].numpy()
        se = np.sqrt(np.diag(dense[j]) / len(xj))
        assert np.all(np.abs(xj.mean(0) - means[j]) < 5 * se)
        np.testing.assert_allclose(np.cov(xj.T), dense[j], atol=0.05 * np.abs(dense[j]).max())


def test_float32_gradients_and_no_large_intermediate():
    weights, means, cov = random_mixture("full", k=8, d=16)
    mixture = ours(weights, means, cov, "full").to(torch.float32)
    means_t = mixture.means.clone().requires_grad_(True)
    m = MixtureDensity(mixture.log_weights, means_t, mixture.precisions_cholesky, "full")
    x = torch.randn(4096, 16)
    log_p = m.log_prob(x)
    assert log_p.dtype == torch.float32 and torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert means_t.grad is not None and torch.isfinite(means_t.grad).all()
    ref = ours(weights, means, cov, "full").log_prob(x.double())
    torch.testing.assert_close(log_p.double(), ref, rtol=1e-4, atol=1e-4)


def test_validation_catches_bad_shapes_and_weights():
    weights, means, cov = random_mixture("diag")
    m = ours(weights, means, cov, "diag")
    with pytest.raises(ValueError, match="precisions_cholesky has shape"):
        MixtureDensity(m.log_weights, m.means, m.precisions_cholesky[0], "diag", validate_args=True)
    with pytest.raises(ValueError, match="sum to"):
        MixtureDensity(m.log_weights + 1, m.means, m.precisions_cholesky, "diag", validate_args=True)
    with pytest.raises(ValueError, match="covariance_type='foo'"):
        MixtureDensity(m.log_weights, m.means, m.precisions_cholesky, "foo")


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_autocast_leaves_the_density_in_float32(cov_type):
    # trainer.precision=bf16-mixed runs the networks under bfloat16 autocast; the density's
    # products must not follow (a bf16 Mahalanobis product keeps ~3 digits)
    weights, means, cov = random_mixture(cov_type, k=5, d=12, seed=3)
    mixture = ours(weights, means, cov, cov_type)
    mixture = MixtureDensity(*(t.float() for t in (mixture.log_weights, mixture.means,
                                                    mixture.precisions_cholesky)), cov_type)
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(0)) * 3
    expected = mixture.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixture.log_prob(x)
        got_bf16_input = mixture.log_prob(x.bfloat16())
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.allclose(got_bf16_input, mixture.log_prob(x.bfloat16().float()))
