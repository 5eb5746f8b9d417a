"""The density evaluator: a Gaussian mixture in torch, shared by the EM and the deep model.

Parameters follow scikit-learn's conventions so numbers can be compared directly:

- ``log_weights``: (K,) log mixture weights (log-softmax output or log of EM weights)
- ``means``: (K, D)
- ``precisions_cholesky`` P, with precision = P @ P.T (P upper triangular for full/tied):
    full      (K, D, D)
    tied      (D, D)
    diag      (K, D)     per-dimension 1/sigma
    spherical (K,)       1/sigma shared by all dimensions

Working with Cholesky factors of the precision means the log-determinant is a sum of
log-diagonals and a Mahalanobis distance is one matrix product: nothing is inverted and
no N x K x D x D tensor is ever built.  Every function is differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .covariance_types import COVARIANCE_TYPES  # one list, shared with the CLI


def check_covariance_type(covariance_type: str) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type={covariance_type!r} is not allowed; allowed: {', '.join(COVARIANCE_TYPES)}"
        )
    return covariance_type


# --------------------------------------------------------------------------- log-determinants


def log_det_precision_cholesky(prec_chol: Tensor, covariance_type: str, dim: int) -> Tensor:
    """log|P| for each component: (K,) or, for tied, a scalar (broadcasts)."""
    if covariance_type in ("full", "tied"):
        return torch.diagonal(prec_chol, dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return prec_chol.log().sum(-1)
    return dim * prec_chol.log()


# --------------------------------------------------------------------------- Mahalanobis terms


# Each takes x (N, D) and, for diag/spherical, x_sq = x**2 if the caller has it already
# (EM's E-step reuses it for its statistics); -> squared distances (N, K).


# rows at a time so that the (rows, K*D) product of a full covariance stays bounded: a whole
# 1,000,000 x 64 input with K=64 would be 32 GB in float64
FULL_PRODUCT_ELEMENTS = 2**22


def _sq_mahalanobis_full(x: Tensor, means: Tensor, prec_chol: Tensor, x_sq=None) -> Tensor:
    # (x - mu_k) P_k for all k with one GEMM: x (N, D) @ [P_1 .. P_K] (D, K*D), minus mu_k P_k:
    # one (rows, K*D) tensor, squared in place when no gradient needs it (the E-step's hot loop)
    n, d = x.shape
    k = means.shape[0]
    mp = torch.einsum("kd,kde->ke", means, prec_chol).reshape(k * d)
    factors = prec_chol.permute(1, 0, 2).reshape(d, k * d)
    rows = max(1, FULL_PRODUCT_ELEMENTS // (k * d))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, means, prec_chol)):
        parts = [torch.addmm(-mp, xc, factors).square().view(len(xc), k, d).sum(-1) for xc in torch.split(x, rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    # Without gradients -mu_k P_k is one more row of the factors, against a column of ones:
    # addmm would first copy its bias into every row of the (rows, K*D) output, 25-40% of
    # the product's time (MNIST PCA-50, K=10)
    factors = torch.cat([factors, -mp.unsqueeze(0)])
    rows = min(rows, n)
    with_ones = x.new_empty(rows, d + 1)
    with_ones[:, d] = 1.0
    product = x.new_empty(rows, k * d)
    out = x.new_empty(n, k)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        with_ones[:m, :d].copy_(x[start:start + m])
        y = torch.mm(with_ones[:m], factors, out=product[:m]).square_()
        torch.sum(y.view(m, k, d), -1, out=out[start:start + m])
    return out


def _sq_mahalanobis_tied(x: Tensor, means: Tensor, prec_chol: Tensor, x_sq=None) -> Tensor:
    xp = x @ prec_chol
    mp = means @ prec_chol
    return (xp.unsqueeze(1) - mp).pow(2).sum(-1)


def _sq_mahalanobis_diag(x: Tensor, means: Tensor, prec_chol: Tensor, x_sq=None) -> Tensor:
    precisions = prec_chol.pow(2)
    x_sq = x.pow(2) if x_sq is None else x_sq
    # computed as (K, N) and returned as its (N, K) view: with K much smaller than D, MKL
    # (on the AMD build machine) ran (K, D) @ (D, N) in 0.062 s where (N, D) @ (D, K) took
    # 0.073 s (60000 x 784, K=10, one thread), and the E-step's r^T x then reads r
    # contiguously: one E-step pass 0.28 -> 0.24 s.  The factor 2 goes on the (K, D) side:
    # on the x side it would cost a pass over the data.
    const = (means.pow(2) * precisions).sum(-1, keepdim=True)
    return (const - (2.0 * means * precisions) @ x.T + precisions @ x_sq.T).T


def _sq_mahalanobis_spherical(x: Tensor, means: Tensor, prec_chol: Tensor, x_sq=None) -> Tensor:
    x_norm = (x.pow(2) if x_sq is None else x_sq).sum(-1)
    # (K, N) layout returned as an (N, K) view, as for diag
    cross = (2.0 * means) @ x.T
    return ((x_norm - cross + means.pow(2).sum(-1, keepdim=True)) * prec_chol.pow(2).unsqueeze(-1)).T


_SQ_MAHALANOBIS = {
    "full": _sq_mahalanobis_full,
    "tied": _sq_mahalanobis_tied,
    "diag": _sq_mahalanobis_diag,
    "spherical": _sq_mahalanobis_spherical,
}


# devices that have autocast (asking torch about another, "meta" included, raises)
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def at_least_float32(t: Tensor | None) -> Tensor | None:
    """bfloat16/float16 (what autocast's products return) as float32; wider dtypes as they are."""
    return t.float() if t is not None and t.dtype in (torch.bfloat16, torch.float16) else t


def component_log_prob(
    x: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str, x_sq: Tensor | None = None
) -> Tensor:
    """log N(x | mu_k, Sigma_k) for every sample and component: (N, D) -> (N, K).
    ``x_sq``: x**2 (N, D), if already computed (used by diag and spherical only).
    Under autocast (``trainer.precision=bf16-mixed``) it computes in float32 all the same:
    a bfloat16 Mahalanobis product keeps about 3 significant digits of a sum of D squares."""
    if x.device.type in AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            wide = [at_least_float32(t) for t in (x, means, prec_chol, x_sq)]
            return component_log_prob(*wide[:3], covariance_type, wide[3])
    dim = x.shape[-1]
    maha = _SQ_MAHALANOBIS[covariance_type](x, means, prec_chol, x_sq)
    # The GEMM expansions for diag/spherical can go a hair below zero by cancellation.
    if covariance_type in ("diag", "spherical"):
        maha = maha.clamp_min(0.0)
    log_det = log_det_precision_cholesky(prec_chol, covariance_type, dim)
    return -0.5 * (dim * math.log(2 * math.pi) + maha) + log_det


# --------------------------------------------------------------------------- conversions


def precision_cholesky_from_covariance(covariances: Tensor, covariance_type: str) -> Tensor:
    """Sigma -> P with P P^T = Sigma^{-1}.  Raises ``torch.linalg.LinAlgError`` naming the
    first component whose covariance is not positive definite."""
    if covariance_type in ("diag", "spherical"):
        if bool((covariances <= 0).any()):
            bad = int((covariances <= 0).reshape(covariances.shape[0], -1).any(-1).nonzero()[0])
            raise torch.linalg.LinAlgError(f"covariance of component {bad} is not positive")
        return covariances.rsqrt()
    batched = covariances if covariance_type == "full" else covariances.unsqueeze(0)
    cov_chol, info = torch.linalg.cholesky_ex(batched)
    if bool((info > 0).any()):
        bad = int((info > 0).nonzero()[0])
        raise torch.linalg.LinAlgError(
            f"covariance of component {bad} is not positive definite"
        )
    prec_chol = precision_cholesky_from_cholesky(cov_chol)
    return prec_chol if covariance_type == "full" else prec_chol[0]


def precision_cholesky_from_cholesky(cov_chol: Tensor) -> Tensor:
    """Lower Cholesky factor L of Sigma (..., D, D) -> upper P = L^{-T} with P P^T = Sigma^{-1}:
    one triangular solve, differentiable."""
    eye = torch.eye(cov_chol.shape[-1], dtype=cov_chol.dtype, device=cov_chol.device)
    return torch.linalg.solve_triangular(cov_chol, eye.expand_as(cov_chol), upper=False).transpose(-1, -2)


def covariance_from_precision_cholesky(prec_chol: Tensor, covariance_type: str) -> Tensor:
    """P -> Sigma = (P P^T)^{-1} = P^{-T} P^{-1}, through the triangular inverse of P."""
    if covariance_type in ("diag", "spherical"):
        return prec_chol.pow(-2)
    eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device)
    inv = torch.linalg.solve_triangular(prec_chol, eye.expand_as(prec_chol), upper=True)
    return inv.transpose(-1, -2) @ inv


def covariance_eigenvalues(covariances: Tensor, covariance_type: str) -> Tensor:
    """Every eigenvalue of every component's covariance (the variances themselves for
    diag/spherical): the collapse monitor's quantity."""
    if covariance_type in ("full", "tied"):
        return torch.linalg.eigvalsh(covariances)
    return covariances


def covariance_shape(n_components: int, dim: int, covariance_type: str) -> tuple[int, ...]:
    """Shape of the covariances (and of their precisions and precision factors)."""
    k, d = n_components, dim
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def n_parameters(n_components: int, dim: int, covariance_type: str) -> int:
    """Number of free parameters (as scikit-learn counts them)."""
    cov = {
        "full": n_components * dim * (dim + 1) // 2,
        "diag": n_components * dim,
        "tied": dim * (dim + 1) // 2,
        "spherical": n_components,
    }[covariance_type]
    return cov + n_components * dim + n_components - 1


# --------------------------------------------------------------------------- the mixture


class MixtureDensity:
    """A Gaussian mixture: ``log_prob``, responsibilities, ``sample``, BIC/AIC.

    Holds references to the tensors it is given, so gradients flow back to whatever
    produced them (a parameter generator, or EM buffers under ``no_grad``).
    """

    def __init__(
        self,
        log_weights: Tensor,
        means: Tensor,
        precisions_cholesky: Tensor,
        covariance_type: str,
        validate_args: bool = False,
    ):
        self.covariance_type = check_covariance_type(covariance_type)
        self.log_weights = log_weights
        self.means = means
        self.precisions_cholesky = precisions_cholesky
        if validate_args:
            self._validate()

    @classmethod
    def from_covariances(cls, weights: Tensor, means: Tensor, covariances: Tensor,
                         covariance_type: str) -> "MixtureDensity":
        prec_chol = precision_cholesky_from_covariance(covariances, covariance_type)
        return cls(weights.log(), means, prec_chol, covariance_type)

    def _validate(self) -> None:
        k, d = self.means.shape
        expected = covariance_shape(k, d, self.covariance_type)
        shape = tuple(self.precisions_cholesky.shape)
        if shape != expected:
            raise ValueError(
                f"precisions_cholesky has shape {shape}, expected {expected} "
                f"for covariance_type={self.covariance_type!r}"
            )
        if self.log_weights.shape != (k,):
            raise ValueError(f"log_weights has shape {tuple(self.log_weights.shape)}, expected ({k},)")
        total = self.log_weights.exp().sum()
        if not torch.isclose(total, torch.ones_like(total), atol=1e-4):
            raise ValueError(f"mixture weights sum to {float(total):.6f}, not 1")

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    @property
    def covariances(self) -> Tensor:
        return covariance_from_precision_cholesky(self.precisions_cholesky, self.covariance_type)

    def covariance_eigenvalues(self) -> Tensor:
        return covariance_eigenvalues(self.covariances, self.covariance_type)

    def weighted_log_prob(self, x: Tensor, x_sq: Tensor | None = None) -> Tensor:
        """(N, D) -> (N, K): log pi_k + log N(x | mu_k, Sigma_k) (scikit-learn's
        ``_estimate_weighted_log_prob``; the function ``component_log_prob`` lacks log pi_k)."""
        return component_log_prob(x, self.means, self.precisions_cholesky,
                                  self.covariance_type, x_sq) + self.log_weights

    def log_prob(self, x: Tensor) -> Tensor:
        """(N, D) -> (N,): log p(x), a log-sum-exp over components."""
        return torch.logsumexp(self.weighted_log_prob(x), dim=-1)

    def log_responsibilities(self, x: Tensor, x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, D) -> (log p(x) (N,), log p(k | x) (N, K))."""
        weighted = self.weighted_log_prob(x, x_sq)
        log_norm = torch.logsumexp(weighted, dim=-1)
        return log_norm, weighted - log_norm.unsqueeze(-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        return self.log_responsibilities(x)[1].exp()

    def predict(self, x: Tensor) -> Tensor:
        return self.weighted_log_prob(x).argmax(-1)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n samples (n, D) and their component labels (n,); differentiable in
        means and precision factors (not in the discrete labels)."""
        return sample_mixture(self.log_weights, self.means, self.precisions_cholesky, self.covariance_type,
                              n, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.rsample(n, generator)

    def n_parameters(self) -> int:
        return n_parameters(self.n_components, self.dim, self.covariance_type)

    def bic(self, x: Tensor) -> float:
        return self.bic_of(self.log_prob(x).sum(), x.shape[0])

    def aic(self, x: Tensor) -> float:
        return self.aic_of(self.log_prob(x).sum())

    def bic_of(self, log_likelihood: Tensor | float, n: int) -> float:
        """BIC of data of ``n`` samples whose log-likelihood (summed) is given (x read in batches)."""
        return float(-2.0 * log_likelihood + self.n_parameters() * math.log(n))

    def aic_of(self, log_likelihood: Tensor | float) -> float:
        return float(-2.0 * log_likelihood + 2.0 * self.n_parameters())

    def to(self, *args, **kwargs) -> "MixtureDensity":
        return MixtureDensity(self.log_weights.to(*args, **kwargs), self.means.to(*args, **kwargs),
                              self.precisions_cholesky.to(*args, **kwargs), self.covariance_type)


def precision_cholesky_from_precision(precisions: Tensor, covariance_type: str) -> Tensor:
    """Lambda -> upper-triangular P with P P^T = Lambda, without inverting anything:
    reverse the index order, take the ordinary Cholesky factor, reverse back."""
    if covariance_type in ("diag", "spherical"):
        return precisions.sqrt()
    flipped = precisions.flip(-1, -2)
    return torch.linalg.cholesky(flipped).flip(-1, -2)


# --------------------------------------------------------------------------- sampling


def sample_mixture(log_weights: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str, n: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """n draws from one mixture, or from each of N per-sample mixtures (an MDN's output).

    One mixture: log_weights (K,), means (K, D), precision factors in this module's shapes
    -> draws (n, D), labels (n,).  N mixtures: log_weights (N, K), means (N, K, D), factors
    full (N, K, D, D), tied (N, D, D), diag (N, K, D), spherical (N, K) -> (N, n, D), (N, n).
    Differentiable in means and precision factors (not in the discrete labels)."""
    labels = torch.multinomial(log_weights.detach().exp(), n, replacement=True, generator=generator)
    batch = labels.dim() - 1  # the component axis of every parameter
    d = means.shape[-1]
    eps = torch.randn(*labels.shape, d, dtype=means.dtype, device=means.device, generator=generator)
    if covariance_type == "tied":
        factors = prec_chol.unsqueeze(batch).expand(*labels.shape, d, d)
    else:
        factors = _per_draw(prec_chol, labels, {"full": 2, "diag": 1, "spherical": 0}[covariance_type])
    if covariance_type == "diag":
        offset = eps / factors
    elif covariance_type == "spherical":
        offset = eps / factors.unsqueeze(-1)
    else:
        # x - mu = eps P^{-1}:  solve P^T (x - mu)^T = eps^T with P^T lower triangular
        offset = torch.linalg.solve_triangular(factors.transpose(-1, -2), eps.unsqueeze(-1),
                                               upper=False).squeeze(-1)
    return _per_draw(means, labels, 1) + offset, labels


def _per_draw(values: Tensor, labels: Tensor, event_dims: int) -> Tensor:
    """(*B, K, *E) -> (*B, n, *E): each draw's component, by its label (*B, n)."""
    batch = labels.dim() - 1
    index = labels.reshape(*labels.shape, *(1,) * event_dims).expand(*labels.shape, *values.shape[batch + 1:])
    return values.gather(batch, index)


# --------------------------------------------------------------------------- per-sample mixtures


def batched_component_log_prob(x: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str) -> Tensor:
    """Each sample with its own mixture (a mixture density network's output):
    x (N, D), means (N, K, D), precision factors full (N, K, D, D), tied (N, D, D),
    diag (N, K, D), spherical (N, K)  ->  log N(x_n | mu_nk, Sigma_nk) as (N, K)."""
    dim = x.shape[-1]
    diff = x.unsqueeze(1) - means
    if covariance_type == "full":
        y = (diff.unsqueeze(-2) @ prec_chol).squeeze(-2)
    elif covariance_type == "tied":
        y = diff @ prec_chol
    elif covariance_type == "diag":
        y = diff * prec_chol
    else:
        y = diff * prec_chol.unsqueeze(-1)
    log_det = log_det_precision_cholesky(prec_chol, covariance_type, dim)
    if covariance_type == "tied":
        log_det = log_det.unsqueeze(-1)
    return -0.5 * (dim * math.log(2 * math.pi) + y.pow(2).sum(-1)) + log_det
