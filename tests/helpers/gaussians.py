"""Independent Gaussian-mixture arithmetic in numpy/scipy: the reference the library's torch
code is checked against.  Covariances in scikit-learn's shapes: full (K, D, D), tied (D, D),
diag (K, D), spherical (K,)."""

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


def random_spd(rng: np.random.Generator, d: int, low: float = 0.3) -> np.ndarray:
    """A well-conditioned symmetric positive-definite matrix with clear off-diagonals."""
    a = rng.normal(size=(d, d))
    return a @ a.T / d + low * np.eye(d)


def random_covariances(rng: np.random.Generator, k: int, d: int, covariance_type: str) -> np.ndarray:
    if covariance_type == "full":
        return np.stack([random_spd(rng, d) for _ in range(k)])
    if covariance_type == "tied":
        return random_spd(rng, d)
    if covariance_type == "diag":
        return rng.uniform(0.3, 2.0, size=(k, d))
    return rng.uniform(0.3, 2.0, size=k)


def random_mixture(rng: np.random.Generator, k: int, d: int, covariance_type: str):
    """(weights (K,), means (K, D), covariances) of a random mixture."""
    weights = rng.dirichlet(np.full(k, 3.0))
    means = rng.normal(scale=1.5, size=(k, d))
    return weights, means, random_covariances(rng, k, d, covariance_type)


def full_covariances(covariances: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """Any covariance type's array as K full (D, D) matrices."""
    c = np.asarray(covariances, dtype=float)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (k, d, d)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    return np.stack([v * np.eye(d) for v in c])


def component_logpdf(z: np.ndarray, means: np.ndarray, full_covs: np.ndarray) -> np.ndarray:
    """log N(z_n | mu_k, Sigma_k) as (N, K), by scipy."""
    return np.stack([multivariate_normal(m, c).logpdf(z) for m, c in zip(means, full_covs)], -1).reshape(len(z), -1)


def mixture_logpdf(z: np.ndarray, weights: np.ndarray, means: np.ndarray, full_covs: np.ndarray) -> np.ndarray:
    """log sum_k pi_k N(z_n | mu_k, Sigma_k) as (N,)."""
    return logsumexp(np.log(weights) + component_logpdf(z, means, full_covs), axis=-1)


def reduce_covariances(full_covs: np.ndarray, weights: np.ndarray, covariance_type: str):
    """K full weighted covariances -> the given type's parameters (scikit-learn's definitions:
    tied = weight-averaged, diag = the diagonals, spherical = the mean variance)."""
    if covariance_type == "full":
        return full_covs
    if covariance_type == "tied":
        return np.einsum("k,kde->de", weights, full_covs)
    diag = np.diagonal(full_covs, axis1=-2, axis2=-1)
    return diag if covariance_type == "diag" else diag.mean(-1)
