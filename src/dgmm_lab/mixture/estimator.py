"""``GaussianMixture``: a scikit-learn-compatible estimator on the project's EM code.

Same constructor, attributes and methods as ``sklearn.mixture.GaussianMixture``; runs the
mini-batch EM of ``em.py`` (the LightningModule runs the same functions) on CPU or GPU.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from . import em
from .choices import INIT_METHODS, INIT_SELECTIONS
from .kmeans import CHUNK
from .rows import MappedRows, batches, mapped, take
from .density import (
    COVARIANCE_TYPES,
    MixtureDensity,
    covariance_from_precision_cholesky,
    precision_cholesky_from_precision,
)

_CHUNK = 4096
# start values of a memory-mapped X come from at most this many rows unless init_max_samples says
MAPPED_INIT_SAMPLES = 2**17


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by exact (mini-batch) EM in torch.

    Parameters are scikit-learn's (``init_params`` as ``em.initial_responsibilities``
    describes it), plus ``device``; ``batch_size`` (rows per E-step batch, None for all);
    ``compute_dtype`` (None: the input's dtype; "float32" or "float64" overrides it);
    ``init_max_samples`` (start values from at most this many random rows, None for all:
    k-means on a sample costs a fraction of a pass over a large X; EM runs on every row);
    ``init_selection``: which of the ``n_init`` converged fits is kept, ``likelihood`` (the
    highest lower bound, as scikit-learn) or ``entropy`` (the likeliest of the most evenly
    weighted: of the fits whose effective number of components, exp of the entropy of
    ``weights_``, is within 1% of the highest).  ``entropy`` assumes clusters of about equal size: on
    autoencoder codes of MNIST (classes 9-11% of the images) the likelihood often prefers a
    fit that merges two digits and splits a third, whose weights give it away
    (docs/benchmarks.md); on data with unequal clusters it picks the wrong fit.

    X may be memory-mapped (an ``np.memmap``, ``np.load(path, mmap_mode="r")``, or the path
    of a ``.npy`` file): it is then read ``batch_size`` rows at a time and never held whole
    (see ``rows.py``), the start values come from ``init_max_samples`` random rows (by
    default ``MAPPED_INIT_SAMPLES``), and the fit equals the in-memory one on the same rows.

    Dtypes, as scikit-learn's (since 1.7): float32 input is computed in float32 and float64
    input in float64 (other input becomes float64); whatever the products' dtype, the
    statistics are summed and the M-step is solved in float64. The fitted attributes have the
    fit's input dtype; scores and probabilities are float32 where both the fit and the input
    are, float64 otherwise.

    Attributes after ``fit`` (numpy, the input's dtype), K = n_components, D = n_features_in_:
    weights_ (K,); means_ (K, D); covariances_, precisions_, precisions_cholesky_: full
    (K, D, D), tied (D, D), diag (K, D), spherical (K,); converged_; n_iter_; lower_bound_
    (the mean log-likelihood per sample of the last E-step); init_lower_bounds_ and
    init_effective_components_ (n_init,), float64: every start's final lower bound and exp of
    the entropy of its weights (one start on a warm start); best_init_: the index of the start kept.
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, device="cpu", batch_size=None, compute_dtype=None, init_max_samples=None,
                 init_selection="likelihood"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.device = device
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        self.init_max_samples = init_max_samples
        self.init_selection = init_selection

    # ------------------------------------------------------------------ checks
    def _check_parameters(self, n_samples: int) -> None:
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ValueError(f"n_components={self.n_components!r} must be an integer >= 1")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type={self.covariance_type!r} is not allowed; allowed: "
                             f"{', '.join(COVARIANCE_TYPES)}")
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"init_params={self.init_params!r} is not allowed; allowed: "
                             f"{', '.join(INIT_METHODS)}")
        if self.init_selection not in INIT_SELECTIONS:
            raise ValueError(f"init_selection={self.init_selection!r} is not allowed; allowed: "
                             f"{', '.join(INIT_SELECTIONS)}")
        if self.n_components > n_samples:
            raise ValueError(f"n_components={self.n_components} must be <= n_samples={n_samples}")
        for name, value, low in (("tol", self.tol, 0), ("reg_covar", self.reg_covar, 0),
                                 ("max_iter", self.max_iter, 1), ("n_init", self.n_init, 1)):
            if value < low:
                raise ValueError(f"{name}={value!r} must be >= {low}")
        if self.init_max_samples is not None and not (
                isinstance(self.init_max_samples, (int, np.integer)) and self.init_max_samples >= self.n_components):
            raise ValueError(f"init_max_samples={self.init_max_samples!r} must be None or an integer >= "
                             f"n_components={self.n_components}")
        if self.compute_dtype not in (None, "float64", "float32"):
            raise ValueError(f"compute_dtype={self.compute_dtype!r} is not allowed; allowed: None, float64, float32")

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def _to_tensor(self, X, reset: bool) -> torch.Tensor | MappedRows:
        rows = mapped(X, self.device)
        if rows is not None:
            return self._checked_mapped(rows, reset)
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1)
        return torch.as_tensor(np.require(X, requirements="W"), device=self.device)

    def _checked_mapped(self, rows: MappedRows, reset: bool) -> MappedRows:
        """scikit-learn's checks of X, without reading it: its values are checked as they are
        read (``MappedRows``)."""
        n, d = rows.shape
        if n < 1 or d < 1:
            raise ValueError(f"Found array with shape {rows.shape}: at least 1 sample and 1 feature are required")
        if reset:
            self.n_features_in_ = d
        elif d != self.n_features_in_:
            raise ValueError(f"X has {d} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return rows

    @staticmethod
    def _mean(x: torch.Tensor | MappedRows) -> torch.Tensor:
        """The mean of x's rows in float64 (D,), summed in the same blocks in memory and
        mapped: a whole-array reduction rounds differently, and float32 products on rows
        centred by a shift one unit in the last place off differ by ~1e-9."""
        return sum(xb.sum(0, dtype=torch.float64) for xb in batches(x, CHUNK)) / len(x)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Fit on X (n_samples, n_features), ``n_init`` times, keeping the most likely fit
        (or, with ``init_selection="entropy"``, the likeliest of the most evenly weighted)."""
        x = self._to_tensor(X, reset=True)
        n, d = x.shape
        self._check_parameters(n)
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed) if seed is not None else
                              int(np.random.default_rng(self.random_state).integers(2**31)))
        shift = self._mean(x)
        warm = self.warm_start and hasattr(self, "converged_")
        starts = [self._previous_mixture()] if warm else \
            [self._initial_mixture(x, shift, generator) for _ in range(self.n_init)]
        results = self._run_em(x, starts, shift)
        bounds = [r["lower_bound"] for r in results]
        best, effective = em.select_start(bounds, [r["mixture"].weights for r in results], self.init_selection)
        self._set_fitted(results[best], x.dtype)
        self.init_lower_bounds_, self.init_effective_components_ = np.array(bounds), np.array(effective)
        self.best_init_ = best
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in {self.max_iter} iterations (tol={self.tol}); "
                "raise max_iter or tol, or check the data", ConvergenceWarning)
        return self

    def fit_predict(self, X, y=None):
        """fit(X), then the labels of X (n_samples,)."""
        return self.fit(X, y).predict(X)

    def _initial_mixture(self, x, shift, generator) -> MixtureDensity:
        given = (self.weights_init, self.means_init, self.precisions_init)
        if all(v is not None for v in given):
            weights = self._tensor(self.weights_init)
            means = self._tensor(self.means_init)
            prec_chol = precision_cholesky_from_precision(self._tensor(self.precisions_init),
                                                          self.covariance_type)
            return MixtureDensity(weights.log(), means, prec_chol, self.covariance_type)
        limit = self.init_max_samples
        if limit is None and isinstance(x, MappedRows):
            limit = MAPPED_INIT_SAMPLES
        sample = x
        if limit is not None and limit < x.shape[0]:
            rows = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:limit]
            sample = take(x, rows.sort().values)
        elif isinstance(x, MappedRows):
            sample = take(x, torch.arange(x.shape[0]))
        r = em.initial_mixture(sample, self.n_components, self.covariance_type, self.init_params, generator,
                               self.reg_covar, shift=shift)
        weights, means, prec_chol = r.weights, r.means, r.precisions_cholesky
        if self.weights_init is not None:
            weights = self._tensor(self.weights_init)
        if self.means_init is not None:
            means = self._tensor(self.means_init)
        if self.precisions_init is not None:
            prec_chol = precision_cholesky_from_precision(self._tensor(self.precisions_init),
                                                          self.covariance_type)
        return MixtureDensity(weights.log(), means, prec_chol, self.covariance_type)

    def _previous_mixture(self) -> MixtureDensity:
        return MixtureDensity(self._tensor(self.weights_).log(), self._tensor(self.means_),
                              self._tensor(self.precisions_cholesky_), self.covariance_type)

    def _run_em(self, x, mixtures: list[MixtureDensity], shift) -> list[dict]:
        """EM from each start (``n_init`` restarts) in lockstep: each iteration reads x once
        for all restarts still running; each restart's iterates are those of its own fit."""
        compute_dtype = self._compute_dtype(x.dtype)
        runs = [dict(mixture=m, lower_bound=-math.inf, converged=False, n_iter=0) for m in mixtures]
        for n_iter in range(1, self.max_iter + 1):
            running = [run for run in runs if not run["converged"]]
            if not running:
                break
            steps = em.em_steps(x, [run["mixture"] for run in running], shift, self.reg_covar, compute_dtype,
                                self.batch_size)
            for run, (result, lower_bound, log_p) in zip(running, steps):
                if result.empty_components:
                    result = self._reseeded(x, result, log_p)
                previous = run["lower_bound"]
                run.update(mixture=result.mixture(self.covariance_type), lower_bound=lower_bound, n_iter=n_iter,
                           converged=abs(lower_bound - previous) < self.tol)
                if self.verbose:
                    print(f"iteration {n_iter}: mean log-likelihood {lower_bound:.6f}")
        return runs

    def _reseeded(self, x, result, log_p):
        worst = em.WorstPoints(len(result.empty_components))
        pairs = zip(batches(x, _CHUNK), torch.split(log_p, _CHUNK)) if isinstance(x, MappedRows) \
            else [(x, log_p)]
        for xb, lb in pairs:
            worst.update(xb, lb)
        warnings.warn(f"components {result.empty_components} lost all their mass "
                      "and were re-seeded at the worst-explained points")
        return em.reseed_empty(result, worst.points, self.covariance_type)

    @classmethod
    def from_mixture(cls, mixture: MixtureDensity, n_iter: int = 0, converged: bool = True,
                     lower_bound: float = float("nan"), **params) -> "GaussianMixture":
        """A fitted estimator holding ``mixture`` (as trained elsewhere, e.g. by EMGMM); params
        are the constructor's (n_components and covariance_type come from the mixture)."""
        est = cls(mixture.n_components, covariance_type=mixture.covariance_type, **params)
        est.n_features_in_ = mixture.dim
        est._set_fitted({"mixture": mixture.to(torch.float64), "converged": converged, "n_iter": n_iter,
                         "lower_bound": lower_bound})
        return est

    def _compute_dtype(self, default: torch.dtype) -> torch.dtype:
        """``compute_dtype`` as a torch dtype; None: ``default`` (the fit's input dtype)."""
        return getattr(torch, self.compute_dtype) if self.compute_dtype else default

    def _set_fitted(self, result: dict, dtype: torch.dtype = torch.float64) -> None:
        m: MixtureDensity = result["mixture"]
        self._mixture = m  # float64: the M-step's own precision, whatever the input's

        def out(t: torch.Tensor) -> np.ndarray:
            return t.to(dtype).cpu().numpy()

        self.weights_ = out(m.weights)
        self.means_ = out(m.means)
        self.precisions_cholesky_ = out(m.precisions_cholesky)
        self.covariances_ = out(covariance_from_precision_cholesky(m.precisions_cholesky, self.covariance_type))
        p = m.precisions_cholesky
        precisions = p.pow(2) if self.covariance_type in ("diag", "spherical") else p @ p.transpose(-1, -2)
        self.precisions_ = out(precisions)
        self.converged_ = result["converged"]
        self.n_iter_ = result["n_iter"]
        self.lower_bound_ = result["lower_bound"]

    # ------------------------------------------------------------------ inference
    def _scored(self, X) -> torch.Tensor:
        check_is_fitted(self)
        return self._to_tensor(X, reset=False)

    def _in_chunks(self, method: str, x: torch.Tensor) -> np.ndarray:
        # rows in chunks keep the (rows, K, D) intermediates in cache: several times faster
        # as scikit-learn: float32 answers only when both the input and the fit are float32
        fitted = torch.float32 if self.means_.dtype == np.float32 else torch.float64
        answer = torch.promote_types(x.dtype, fitted)
        dtype = self._compute_dtype(answer)
        fn = getattr(self._mixture.to(dtype), method)
        out = None  # filled in place: a list of chunks and their concatenation would be twice the answer
        for start, xc in zip(range(0, x.shape[0], _CHUNK), batches(x, _CHUNK)):
            part = fn(xc.to(dtype))
            if out is None:
                shape = (x.shape[0], *part.shape[1:])
                out = part.new_empty(shape, dtype=part.dtype if method == "predict" else answer)
            out[start:start + len(part)] = part
        return out.cpu().numpy()

    def score_samples(self, X):
        """log p(x) of each sample of X (n_samples, n_features) -> (n_samples,)."""
        x = self._scored(X)
        return self._in_chunks("log_prob", x)

    def score(self, X, y=None):
        """The mean log-likelihood per sample of X (n_samples, n_features): a float."""
        return float(self.score_samples(X).mean())

    def predict(self, X):
        """The most probable component of each sample: (n_samples, n_features) -> (n_samples,)."""
        x = self._scored(X)
        return self._in_chunks("predict", x)

    def predict_proba(self, X):
        """Responsibilities p(k | x): (n_samples, n_features) -> (n_samples, n_components)."""
        x = self._scored(X)
        return self._in_chunks("responsibilities", x)

    def sample(self, n_samples=1):
        """(samples (n_samples, n_features), their components (n_samples,)), drawn with a
        generator seeded from ``random_state``."""
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples!r} must be >= 1")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(np.random.default_rng(self.random_state).integers(2**31)))
        x, labels = self._mixture.sample(n_samples, generator)
        return x.cpu().numpy(), labels.cpu().numpy()

    def bic(self, X):
        """Bayesian information criterion on X (n_samples, n_features); lower is better."""
        log_p = self.score_samples(X)
        return -2 * float(log_p.sum(dtype=np.float64)) + self._n_parameters() * math.log(len(log_p))

    def aic(self, X):
        """Akaike information criterion on X (n_samples, n_features); lower is better."""
        return -2 * float(self.score_samples(X).sum(dtype=np.float64)) + 2 * self._n_parameters()

    def _n_parameters(self) -> int:
        return self._mixture.n_parameters()
