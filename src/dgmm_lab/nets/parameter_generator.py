"""Parameter generators: networks that produce a valid ``MixtureDensity``.

- ``GlobalParameters``: mixture parameters as free tensors in unconstrained form (weights
  by log-softmax, covariance Cholesky factors with softplus diagonal plus a floor), learned
  by gradient descent: the prior of VaDE, the base density of exact-likelihood training.
- ``AmortizedParameters``: DAGMM's estimation network.  It outputs soft memberships
  gamma(z); weights, means and covariances are the gamma-weighted moments of the batch
  (summed over processes, with gradients).  For evaluation the same moments are taken
  over the whole training set with the current networks: the training-set mixture.

Neither produces per-sample parameters that score the sample they came from: that
recipe is degenerate (mu = x, variance -> 0) and is not offered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mixture.density import MixtureDensity, precision_cholesky_from_cholesky
from ..mixture.em import SufficientStats, m_step


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class GlobalParameters(nn.Module):
    """Free mixture parameters; scales are bounded below by ``min_scale`` (a standard
    deviation) so no component can collapse onto a point."""

    def __init__(self, n_components: int, dim: int, covariance_type: str,
                 min_scale: float = 1e-3, init_scale: float = 1.0):
        super().__init__()
        self.covariance_type, self.min_scale = covariance_type, min_scale
        k, d = n_components, dim
        self.logits = nn.Parameter(torch.zeros(k))
        self.means = nn.Parameter(torch.randn(k, d))
        raw = _inverse_softplus(torch.tensor(init_scale - min_scale))
        diag_shape = {"full": (k, d), "tied": (d,), "diag": (k, d), "spherical": (k,)}[covariance_type]
        self.raw_scale = nn.Parameter(torch.full(diag_shape, float(raw)))
        if covariance_type in ("full", "tied"):
            off_shape = (k, d, d) if covariance_type == "full" else (d, d)
            self.off_diagonal = nn.Parameter(torch.zeros(off_shape))

    def scales(self) -> Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self) -> MixtureDensity:
        log_weights = torch.log_softmax(self.logits, -1)
        scale = self.scales()
        if self.covariance_type in ("diag", "spherical"):
            return MixtureDensity(log_weights, self.means, 1.0 / scale, self.covariance_type)
        # covariance Cholesky L (lower, positive diagonal) -> precision factor P = L^{-T}
        chol = torch.tril(self.off_diagonal, -1) + torch.diag_embed(scale)
        return MixtureDensity(log_weights, self.means, precision_cholesky_from_cholesky(chol), self.covariance_type)

    @torch.no_grad()
    def set_from(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Start from given weights/means/covariances (e.g. an EM fit)."""
        self.logits.copy_(weights.clamp_min(1e-8).log().to(self.logits))
        self.means.copy_(means.to(self.means))
        target = self.raw_scale
        if self.covariance_type in ("diag", "spherical"):
            std = covariances.sqrt().clamp_min(self.min_scale * 1.01)
            target.copy_(_inverse_softplus(std - self.min_scale).to(target))
            return
        chol = torch.linalg.cholesky(covariances.double())
        diag = torch.diagonal(chol, dim1=-2, dim2=-1).clamp_min(self.min_scale * 1.01)
        target.copy_(_inverse_softplus(diag - self.min_scale).to(target))
        self.off_diagonal.copy_(torch.tril(chol, -1).to(self.off_diagonal))


class AmortizedParameters(nn.Module):
    """DAGMM's estimation network: z -> gamma (N, K) -> moments -> mixture."""

    def __init__(self, in_dim: int, n_components: int, covariance_type: str,
                 hidden: int | list[int] = 10, dropout: float = 0.5, eps: float = 1e-5):
        super().__init__()
        self.covariance_type, self.eps = covariance_type, eps
        sizes = [in_dim, *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):  # the paper's tanh and dropout after each hidden layer
            layers += [nn.Linear(a, b), nn.Tanh(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], n_components))
        k, d = n_components, in_dim
        self.register_buffer("sum_gamma", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("sum_z", torch.zeros(k, d, dtype=torch.float64))
        self.register_buffer("sum_zz", torch.zeros(k, d, d, dtype=torch.float64))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.float64))

    def memberships(self, z: Tensor) -> Tensor:
        return torch.softmax(self.net(z), -1)

    @staticmethod
    def moments(z: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sums that can be added across batches and processes: n, sum gamma (K,),
        sum gamma z (K, D), sum gamma z z^T (K, D, D)."""
        n = torch.tensor(float(z.shape[0]), dtype=z.dtype, device=z.device)
        return n, gamma.sum(0), gamma.T @ z, torch.einsum("nk,nd,ne->kde", gamma, z, z)

    def mixture_from_moments(self, n: Tensor, s0: Tensor, s1: Tensor, s2: Tensor,
                             dtype: torch.dtype | None = None) -> MixtureDensity:
        """Weights, means, covariances from the sums: EM's M-step (``em.m_step``) with ``eps``
        added to every N_k and variance; computed in float64 (S2/S0 - mu mu^T cancels badly
        in float32), returned in ``dtype`` (default: the sums' dtype)."""
        dtype = dtype or s1.dtype
        n, s0, s1, s2 = (t.double() for t in (n, s0, s1, s2))
        # the M-step's second moments per covariance type; the tied one sums over components
        # as EM's sum over samples does (memberships sum to one)
        sxx = {"full": s2, "tied": s2.sum(0)}.get(self.covariance_type, torch.diagonal(s2, dim1=-2, dim2=-1))
        stats = SufficientStats(s0, s1, sxx, n.new_zeros(()), n)
        # m_step retries a covariance left singular by a membership collapsing onto a few codes
        # with growing jitter (logged) instead of ending the run
        r = m_step(stats, s1.new_zeros(s1.shape[1]), self.covariance_type, reg_covar=self.eps, nk_eps=self.eps)
        return MixtureDensity(r.weights.log().to(dtype), r.means.to(dtype), r.precisions_cholesky.to(dtype),
                              self.covariance_type)

    def forward(self, z: Tensor, gamma: Tensor, reduce=None) -> MixtureDensity:
        """Batch mixture; ``reduce`` sums the moments over processes (with gradients).
        The sums are float64: DAGMM's error features (cosine similarity near 1) have
        variances near 1e-6, which S2/S0 - mu mu^T cannot resolve from float32 sums."""
        sums = self.moments(z.double(), gamma.double())
        if reduce is not None:
            sums = tuple(reduce(s) for s in sums)
        return self.mixture_from_moments(*sums, dtype=z.dtype)

    @torch.no_grad()
    def fit_training_set(self, codes, reduce=None) -> None:
        """The evaluation mixture: moments of every training code z (an iterable of
        batches), with memberships from the current network; ``reduce`` sums the list of
        sums over processes in place.  Call in eval mode (no dropout)."""
        buffers = [self.n_seen, self.sum_gamma, self.sum_z, self.sum_zz]
        for buf in buffers:
            buf.zero_()
        for z in codes:
            for buf, s in zip(buffers, self.moments(z.double(), self.memberships(z).double())):
                buf += s
        if reduce is not None:
            reduce(buffers)

    def training_set_mixture(self, dtype: torch.dtype) -> MixtureDensity:
        if float(self.n_seen) == 0:
            raise RuntimeError("the training-set mixture is not estimated yet (fit_training_set)")
        sums = (self.n_seen, self.sum_gamma, self.sum_z, self.sum_zz)
        return self.mixture_from_moments(*(s.to(dtype) for s in sums))


def inverse_covariance_penalty(mixture: MixtureDensity) -> Tensor:
    """DAGMM's P(Sigma) = sum_k sum_d 1 / Sigma_k,dd: large when a variance collapses.  Every
    covariance type counts K x D variances (a spherical component has D equal ones, a tied
    covariance is every component's), so lambda_cov means the same in a sweep over types."""
    cov, kind = mixture.covariances, mixture.covariance_type
    variances = torch.diagonal(cov, dim1=-2, dim2=-1) if kind in ("full", "tied") else \
        cov.unsqueeze(-1) if kind == "spherical" else cov
    return variances.reciprocal().expand(*mixture.means.shape).sum()


class ConditionalParameters(nn.Module):
    """A mixture density network's head: features h(x) -> a mixture over a *different*
    variable y (Bishop 1994).  Per-sample parameters are principled here because they never
    score the input they were computed from.  Scales: softplus plus ``min_scale``; full and
    tied covariances through a Cholesky factor L (the precision factor is L^{-T})."""

    def __init__(self, in_dim: int, n_components: int, target_dim: int, covariance_type: str,
                 min_scale: float = 1e-3):
        super().__init__()
        self.k, self.d, self.covariance_type, self.min_scale = n_components, target_dim, covariance_type, min_scale
        k, d = n_components, target_dim
        n_scale = {"full": k * d, "tied": d, "diag": k * d, "spherical": k}[covariance_type]
        n_off = {"full": k * d * (d - 1) // 2, "tied": d * (d - 1) // 2}.get(covariance_type, 0)
        self.sizes = [k, k * d, n_scale, n_off]
        self.head = nn.Linear(in_dim, sum(self.sizes))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> log weights (N, K), means (N, K, D), precision factors (per covariance type)."""
        n, k, d = h.shape[0], self.k, self.d
        logits, means, raw_scale, off = torch.split(self.head(h), self.sizes, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        means = means.view(n, k, d)
        if self.covariance_type == "diag":
            return torch.log_softmax(logits, -1), means, 1.0 / scale.view(n, k, d)
        if self.covariance_type == "spherical":
            return torch.log_softmax(logits, -1), means, 1.0 / scale
        shape = (n, k, d) if self.covariance_type == "full" else (n, d)
        rows, cols = torch.tril_indices(d, d, -1)
        lower = h.new_zeros(*shape, d)
        lower[..., rows, cols] = off.view(*shape[:-1], -1)
        chol = lower + torch.diag_embed(scale.view(shape))
        return torch.log_softmax(logits, -1), means, precision_cholesky_from_cholesky(chol)
