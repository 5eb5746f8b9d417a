"""Exact EM for Gaussian mixtures over mini-batches: sufficient statistics, M-step, init.

One EM iteration = E-step over all data, batch by batch, adding to ``SufficientStats``,
then one ``m_step``.  Because the statistics are sums, splitting the data into batches
or processes (summing with one all-reduce) gives the same iterate as one full batch.

Statistics are accumulated in float64 on data shifted by a fixed centre ``shift``
(for example the data mean), so sum(r x x^T) - N mu mu^T does not cancel catastrophically.
The products may run in float32 (``compute_dtype``) for speed; accumulation stays float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .covariances import stable_precision_cholesky
from .density import MixtureDensity, precision_cholesky_from_covariance
from .kmeans import CHUNK, kmeans_plus_plus, lloyd
from .rows import MappedRows, batches

# as scikit-learn: keeps an emptied component's weight and mean finite
_NK_EPS = 10 * torch.finfo(torch.float64).eps
# init_selection="entropy": starts this close (relative) to the most even count as even; the
# likelihood decides among them (on MNIST's codes, balanced and merging starts differ by 3-6%)
EVEN_TOLERANCE = 0.01


@dataclass
class SufficientStats:
    """Sums over samples of r_nk, r_nk (x_n - c), r_nk (x_n - c)(x_n - c)^T (per type),
    and of log p(x_n).  Shapes: nk (K,), sx (K, D), sxx full (K, D, D), tied (D, D),
    diag/spherical (K, D)."""

    nk: Tensor
    sx: Tensor
    sxx: Tensor
    log_likelihood: Tensor
    n_samples: Tensor

    @classmethod
    def zeros(cls, k: int, d: int, covariance_type: str, device=None) -> "SufficientStats":
        sxx_shape = {"full": (k, d, d), "tied": (d, d)}.get(covariance_type, (k, d))
        z = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(k, **z), torch.zeros(k, d, **z), torch.zeros(sxx_shape, **z),
                   torch.zeros((), **z), torch.zeros((), **z))

    def tensors(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def accumulate(
    stats: SufficientStats,
    x: Tensor,
    mixture: MixtureDensity,
    shift: Tensor,
    compute_dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> Tensor:
    """E-step on one batch x (N, D): add its statistics to ``stats`` in place; returns
    log p(x) per sample (N,).

    The density is scored on the centred data with centred means (it is translation
    invariant), so the centred rows and, for diag/spherical, their squares serve both the
    log-density and the statistics: each chunk is read and squared once."""
    cov_type = mixture.covariance_type
    chunk_size = chunk_size or chunk_rows(mixture.n_components, x.shape[1], cov_type)
    centred_mixture = MixtureDensity(mixture.log_weights, mixture.means - shift, mixture.precisions_cholesky,
                                     cov_type).to(compute_dtype)
    shift = shift.to(compute_dtype)
    n, d = x.shape
    k = mixture.n_components
    # work arrays allocated once per call: a fresh multi-megabyte tensor per chunk is a
    # fresh mmap and its page faults every time.  Full covariance keeps the whole batch's
    # centred rows and responsibilities for its second moments (below); the others need
    # only one chunk at a time.
    whole_batch = cov_type == "full"
    rows = n if whole_batch else min(chunk_size, n)
    centred_buf = torch.empty(rows, d, dtype=compute_dtype, device=x.device)
    squares_buf = torch.empty_like(centred_buf) if cov_type in ("diag", "spherical") else None
    resp_buf = centred_buf.new_empty(n, k) if whole_batch else None
    negligible = torch.finfo(compute_dtype).eps ** 2
    log_likelihoods = []
    for start in range(0, n, chunk_size):
        xc = x[start:start + chunk_size]
        at = slice(start, start + len(xc)) if whole_batch else slice(0, len(xc))
        centred = torch.sub(xc.to(compute_dtype), shift, out=centred_buf[at])
        squares = None if squares_buf is None else torch.mul(centred, centred, out=squares_buf[at])
        weighted = centred_mixture.weighted_log_prob(centred, squares)
        log_norm, resp = responsibilities(weighted, None if resp_buf is None else resp_buf[at], zeros=not whole_batch)
        if whole_batch:
            # each such term is below the rounding of the sums it would join; dropping
            # them from every statistic alike keeps each covariance a weighted covariance
            resp.masked_fill_(resp < negligible, 0.0)
        log_likelihoods.append(log_norm)
        stats.log_likelihood += log_norm.sum(dtype=torch.float64)
        stats.n_samples += xc.shape[0]
        stats.nk += resp.sum(0, dtype=torch.float64)
        stats.sx += (resp.T @ centred).double()
        if cov_type == "tied":
            stats.sxx += (centred.T @ centred).double()
        elif cov_type in ("diag", "spherical"):
            stats.sxx += (resp.T @ squares).double()
    if whole_batch:
        stats.sxx += full_second_moments(centred_buf, resp_buf, chunk_size)
    return torch.cat(log_likelihoods)


def responsibilities(weighted: Tensor, out: Tensor | None = None, zeros: bool = True) -> tuple[Tensor, Tensor]:
    """(log p(x) (N,), p(k | x) (N, K)) from the weighted log-densities (N, K), ``out`` taking the
    responsibilities: torch's logsumexp and exp, with every exponent clamped where exp is still
    a normal number, and the responsibilities clamped there (below 3.2e-38 in float32) set to
    0 (``zeros=False``: left at exp(floor), for a caller that drops
    them itself).  exp of an argument that underflows takes a slow path, and separated components put
    most entries there (float32 below -87, float64 below -708): 0.4-1.2 ms per 2048 x 16
    exponentials against 0.04 ms clamped (2 threads).  The log-likelihoods are bit-identical."""
    floor = math.log(torch.finfo(weighted.dtype).tiny) + 1.0  # exp at log(tiny) itself is on the slow path
    top = weighted.amax(-1)
    shift = top.masked_fill(top.abs() == math.inf, 0.0)  # as torch.logsumexp
    log_norm = (weighted - shift.unsqueeze(-1)).clamp_min_(floor).exp_().sum(-1).log_().add_(shift)
    log_norm.masked_fill_(top == -math.inf, -math.inf)  # a row of -inf, which the clamp made finite
    log_resp = weighted - log_norm.unsqueeze(-1)
    underflow = log_resp < floor if zeros else None
    log_resp.clamp_min_(floor)
    resp = log_resp.exp_() if out is None else torch.exp(log_resp, out=out)
    return log_norm, resp if underflow is None else resp.masked_fill_(underflow, 0.0)


SPARSE_BLOCK = 2**15


def full_second_moments(centred: Tensor, resp: Tensor, chunk_size: int) -> Tensor:
    """sum_n r_nk c_n c_n^T, (N, D) and (N, K) -> (K, D, D) float64.

    Off the CPU only the dense product runs: the gathers below wait on the device for their
    counts (a host synchronisation per component), where a GPU is bound by its launches.

    Mixtures of separated clusters have mostly zero responsibilities (MNIST PCA-50, K=10:
    83% below float32 eps^2), so each component then gathers its own rows: 0.014 s per
    pass against 0.031 s for the dense product (float32, 2 threads; 0.026 against 0.067 s
    on one).  The gathers break even with about half the responsibilities kept and are
    1.4-1.8x slower with all kept, so above a third the dense product runs, in cache-sized
    chunks."""
    n, d = centred.shape
    k = resp.shape[1]
    out = torch.zeros(k, d, d, dtype=torch.float64, device=centred.device)
    if centred.device.type == "cpu" and torch.count_nonzero(resp) <= n * k / 3:
        # a block of rows at a time: the transposed responsibilities stay small beside large N.
        # The gathers go into work arrays reused for every block and component: a fresh
        # array for each, each of another size, fragments the heap (the peak of one fit
        # varied from 0.8 to 1.9 GB between identical runs).
        block = min(SPARSE_BLOCK, n)
        gathered, weighted, resp_t = centred.new_empty(block, d), centred.new_empty(block, d), resp.new_empty(k, block)
        for cb, rb in zip(torch.split(centred, SPARSE_BLOCK), torch.split(resp, SPARSE_BLOCK)):
            for j, rj in enumerate(resp_t[:, : len(rb)].copy_(rb.T)):
                rows = rj.nonzero().squeeze(1)
                cj = torch.index_select(cb, 0, rows, out=gathered[: len(rows)])
                wj = torch.mul(cj, rj.index_select(0, rows).unsqueeze(1), out=weighted[: len(rows)])
                out[j] += (wj.T @ cj).double()
        return out
    weighted_buf = centred.new_empty(min(chunk_size, n), k, d)
    for cc, rc in zip(torch.split(centred, chunk_size), torch.split(resp, chunk_size)):
        weighted = torch.mul(rc.unsqueeze(-1), cc.unsqueeze(1), out=weighted_buf[: len(cc)])
        out += (weighted.view(len(cc), k * d).T @ cc).double().view(k, d, d)
    return out


def chunk_rows(k: int, d: int, covariance_type: str) -> int:
    """Rows per E-step chunk, so that the chunk's element-wise work stays in cache.  Measured
    on 2 cores (float32 and float64): full covariance is fastest with about 2^20 elements
    in its (rows, K*D) product (2048 rows for D=32, K=16); the others with about 2^18 in
    each (rows, D) array (384-512 rows for 784-d MNIST: 0.34 s per pass against 0.54 s
    with 4096 rows, one thread)."""
    width, target = (k * d, 2**20) if covariance_type == "full" else (d, 2**18)
    return max(256, min(4096, target // width))


@dataclass
class MStepResult:
    """Weights (K,), means (K, D), covariances and precision factors (shapes per type),
    and the components that lost all their mass."""

    weights: Tensor
    means: Tensor
    covariances: Tensor
    precisions_cholesky: Tensor
    empty_components: list[int]

    def mixture(self, covariance_type: str) -> MixtureDensity:
        return MixtureDensity(self.weights.log(), self.means, self.precisions_cholesky, covariance_type)


def m_step(stats: SufficientStats, shift: Tensor, covariance_type: str,
           reg_covar: float = 1e-6, nk_eps: float = _NK_EPS) -> MStepResult:
    """New weights, means, covariances (float64) from summed statistics: ``nk_eps`` is
    added to every N_k, ``reg_covar`` to every variance.  Differentiable in the statistics
    (DAGMM's estimation network trains through it).

    Raises ``torch.linalg.LinAlgError`` naming the component if a covariance is still not
    positive definite after regularisation."""
    nk = stats.nk + nk_eps
    n = stats.n_samples
    centred_means = stats.sx / nk.unsqueeze(-1)
    means = centred_means + shift.double()
    d = means.shape[1]
    if covariance_type == "full":
        cov = stats.sxx / nk.view(-1, 1, 1) - centred_means.unsqueeze(-1) * centred_means.unsqueeze(1)
        cov = cov + reg_covar * torch.eye(d, dtype=cov.dtype, device=cov.device)
    elif covariance_type == "tied":
        cov = (stats.sxx - (nk.unsqueeze(-1) * centred_means).T @ centred_means) / nk.sum()
        cov = cov + reg_covar * torch.eye(d, dtype=cov.dtype, device=cov.device)
    else:
        cov = stats.sxx / nk.unsqueeze(-1) - centred_means.pow(2) + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(-1)
    cov, prec_chol = stable_precision_cholesky(_symmetrise(cov, covariance_type),
                                               covariance_type, reg_covar)
    empty = (stats.nk <= _NK_EPS * n).nonzero().flatten().tolist()
    return MStepResult(nk / n, means, cov, prec_chol, empty)


def _symmetrise(cov: Tensor, covariance_type: str) -> Tensor:
    if covariance_type in ("full", "tied"):
        return 0.5 * (cov + cov.transpose(-1, -2))
    return cov


# --------------------------------------------------------------------------- initialisation


def initial_responsibilities(x: Tensor, k: int, method: str,
                             generator: torch.Generator) -> Tensor:
    """(N, K) responsibilities to start EM from, as scikit-learn's ``init_params`` (with
    torch's random stream, not numpy's):

    - ``kmeans``: the one-hot labels of k-means (k-means++ seeds, then Lloyd to convergence);
    - ``k-means++``: 1 on each k-means++ seed for its own component, 0 elsewhere;
    - ``random``: uniform random rows, normalised;
    - ``random_from_data``: 1 on each of k distinct random points for its own component.

    With ``k-means++`` and ``random_from_data`` each component starts on one point, so its
    M-step covariance is ``reg_covar`` alone (scikit-learn's too, except for tied: see
    ``stats_from_responsibilities``)."""
    n = x.shape[0]
    if method == "kmeans":
        _, labels = lloyd(x, kmeans_plus_plus(x, k, generator)[0])
        return torch.zeros(n, k, dtype=x.dtype, device=x.device).scatter_(1, labels.unsqueeze(1), 1.0)
    if method == "random":
        resp = torch.rand(n, k, generator=generator, dtype=x.dtype, device=x.device)
        return resp / resp.sum(-1, keepdim=True)
    if method in ("k-means++", "random_from_data"):
        if method == "k-means++":
            chosen = kmeans_plus_plus(x, k, generator)[1]
        else:
            chosen = torch.randperm(n, generator=generator, device=x.device)[:k]
        resp = torch.zeros(n, k, dtype=x.dtype, device=x.device)
        resp[chosen, torch.arange(k, device=x.device)] = 1.0
        return resp
    raise ValueError(
        f"init_params={method!r} is not allowed; allowed: kmeans, k-means++, random, random_from_data"
    )


def stats_from_responsibilities(x: Tensor, resp: Tensor, shift: Tensor,
                                covariance_type: str, chunk_size: int = CHUNK) -> SufficientStats:
    """Statistics for given responsibilities resp (N, K) of x (N, D) (to turn an init into
    parameters), ``chunk_size`` rows at a time in float64: no (N, K, D) array, and x is
    never copied whole. Rows need not sum to one: the tied second moment weights each
    sample by its row's mass, so points that belong to no component count for nothing
    (scikit-learn's tied estimate takes every sample at full weight there)."""
    k, d = resp.shape[1], x.shape[1]
    stats = SufficientStats.zeros(k, d, covariance_type, device=x.device)
    shift = shift.double()
    for xc, rc in zip(torch.split(x, chunk_size), torch.split(resp, chunk_size)):
        centred, rc = xc.double() - shift, rc.double()
        stats.nk += rc.sum(0)
        stats.sx += rc.T @ centred
        stats.n_samples += xc.shape[0]
        if covariance_type == "full":
            stats.sxx += full_second_moments(centred, rc, chunk_rows(k, d, "full"))
        elif covariance_type == "tied":
            stats.sxx += (centred * rc.sum(1, keepdim=True)).T @ centred
        else:
            stats.sxx += rc.T @ centred.pow(2)
    return stats


def initial_mixture(x: Tensor, k: int, covariance_type: str, method: str, generator: torch.Generator,
                    reg_covar: float = 1e-6, n_init: int = 1, shift: Tensor | None = None) -> MStepResult:
    """Start values for EM on x (N, D): ``method``'s responsibilities, their statistics, one
    M-step.  With ``n_init`` > 1 the restart whose mixture has the highest mean
    log-likelihood on x is kept (the first of equals).  ``shift``: the centre the
    statistics are taken around (default: the mean of x)."""
    shift = x.mean(0, dtype=torch.float64) if shift is None else shift
    best, best_score = None, None
    for _ in range(n_init):
        resp = initial_responsibilities(x, k, method, generator)
        result = m_step(stats_from_responsibilities(x, resp, shift, covariance_type), shift, covariance_type,
                        reg_covar)
        if n_init == 1:
            return result
        score = float(torch.cat([result.mixture(covariance_type).log_prob(xc.double())
                                 for xc in torch.split(x, CHUNK)]).mean())
        if best is None or score > best_score:
            best, best_score = result, score
    return best


def select_start(lower_bounds: list[float], weights: list[torch.Tensor], init_selection: str) -> tuple[int, list[float]]:
    """Which of n fits to keep, from their mean log-likelihoods and weights (each (K,)): the
    likeliest (``likelihood``), or the likeliest of those whose effective number of components
    (exp of the weights' entropy) is within ``EVEN_TOLERANCE`` of the highest (``entropy``).
    Returns its index (the first of equals, as scikit-learn) and the n effective numbers."""
    effective = [math.exp(torch.special.entr(w).sum().item()) for w in weights]
    candidates = range(len(lower_bounds))
    if init_selection == "entropy":
        candidates = [i for i in candidates if effective[i] >= (1 - EVEN_TOLERANCE) * max(effective)]
    return max(candidates, key=lower_bounds.__getitem__), effective


def em_step(x: Tensor | MappedRows, mixture: MixtureDensity, shift: Tensor, reg_covar: float = 1e-6,
            compute_dtype: torch.dtype = torch.float64,
            batch_size: int | None = None) -> tuple[MStepResult, float, Tensor]:
    """One EM iteration on x (N, D), in memory or mapped, the E-step ``batch_size`` rows at a
    time (by default ``batch_rows``): (M-step result, mean log-likelihood under ``mixture``,
    log p(x) (N,)). Emptied components are left to the caller (``reseed_empty``)."""
    return em_steps(x, [mixture], shift, reg_covar, compute_dtype, batch_size)[0]


def em_steps(x: Tensor | MappedRows, mixtures: list[MixtureDensity], shift: Tensor, reg_covar: float = 1e-6,
             compute_dtype: torch.dtype = torch.float64,
             batch_size: int | None = None) -> list[tuple[MStepResult, float, Tensor]]:
    """One EM iteration of each mixture (restarts of one fit) in one pass over x: each batch
    is read once for all of them, and each gets exactly ``em_step``'s answer."""
    k, d = mixtures[0].n_components, x.shape[1]
    cov_type = mixtures[0].covariance_type
    stats = [SufficientStats.zeros(k, d, cov_type, device=shift.device) for _ in mixtures]
    log_p = [[] for _ in mixtures]
    for xb in batches(x, batch_size or batch_rows(k, d, cov_type)):
        for s, mixture, parts in zip(stats, mixtures, log_p):
            parts.append(accumulate(s, xb, mixture, shift, compute_dtype))
    return [(m_step(s, shift, cov_type, reg_covar), float(s.log_likelihood / s.n_samples), torch.cat(parts))
            for s, parts in zip(stats, log_p)]


def batch_rows(k: int, d: int, covariance_type: str) -> int:
    """The E-step's default rows per batch: as many as keep a batch's work arrays near 2^22
    numbers (all of MNIST's 60k x 50, K=10, in one)."""
    return max(chunk_rows(k, d, covariance_type), 2**22 // (d + k))


class WorstPoints:
    """Keeps the m samples with the lowest log-likelihood seen in an E-step: the places an
    emptied component is moved to."""

    def __init__(self, m: int):
        self.m = m
        self.points: Tensor | None = None
        self.scores: Tensor | None = None

    def update(self, x: Tensor, log_likelihood: Tensor) -> None:
        x = x.detach().double()
        scores = log_likelihood.detach().double()
        if self.points is not None:
            x = torch.cat([self.points, x])
            scores = torch.cat([self.scores, scores])
        keep = torch.topk(scores, min(self.m, scores.shape[0]), largest=False).indices
        self.points, self.scores = x[keep], scores[keep]


def reseed_empty(result: MStepResult, candidates: Tensor, covariance_type: str) -> MStepResult:
    """Move each emptied component onto one of the worst-explained candidate points, with
    the average covariance of the others and a small weight; keeps the mixture valid."""
    empty = result.empty_components
    if not empty:
        return result
    k = result.weights.shape[0]
    alive = [i for i in range(k) if i not in empty]
    means, cov, weights = result.means.clone(), result.covariances.clone(), result.weights.clone()
    for slot, comp in enumerate(empty):
        means[comp] = candidates[slot % candidates.shape[0]].to(means)
        if covariance_type != "tied" and alive:
            cov[comp] = cov[alive].mean(0)
        weights[comp] = 1.0 / (k * 100)
    weights = weights / weights.sum()
    prec_chol = precision_cholesky_from_covariance(cov, covariance_type)
    return MStepResult(weights, means, cov, prec_chol, empty)
