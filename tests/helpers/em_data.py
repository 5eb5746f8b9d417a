"""Small data sets and a scikit-learn start point shared by the EM parity tests (CPU and GPU)."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture


def blobs(seed: int, n: int = 900, d: int = 3, k: int = 3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(k, d))
    labels = rng.integers(k, size=n)
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    return centres[labels] + rng.normal(size=(n, d)) * scales[labels] + 100.0  # far from 0


def anisotropic(seed: int, n: int = 800):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    x[: n // 2] = x[: n // 2] @ np.array([[3.0, 0.0], [2.5, 0.4]]) + [0, 5]
    return x


DATASETS = {"blobs": blobs(0), "anisotropic": anisotropic(1)}


def shared_init(x, k, cov_type, seed=0):
    """scikit-learn's start values after one iteration, to start both implementations alike."""
    sk = SkGaussianMixture(k, covariance_type=cov_type, max_iter=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(x)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)
