"""k-means for EM's start values: k-means++ seeding and Lloyd's iterations, in torch."""

from __future__ import annotations

import torch
from torch import Tensor

# rows at a time in the whole-data passes (here and in em.py's init): their temporaries stay
# small beside a large x
CHUNK = 2**16


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator,
                     n_local_trials: int | None = None) -> tuple[Tensor, Tensor]:
    """Greedy k-means++ seeding, as scikit-learn's ``kmeans_plusplus`` (its own random
    stream, not numpy's): (N, D) -> centres (k, D) and their row indices (k,)."""
    n = x.shape[0]
    n_local_trials = n_local_trials or 2 + int(torch.tensor(float(k)).log())
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    indices = [first[0]]
    x_norms = row_norms(x)
    closest = squared_distances(x[first], x, x_norms)[0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: take any remaining point
            indices.append(torch.randint(n, (1,), generator=generator, device=x.device)[0])
            continue
        candidates = torch.multinomial(closest / total, n_local_trials, replacement=True,
                                       generator=generator)
        dists = squared_distances(x[candidates], x, x_norms)
        pot = torch.minimum(closest, dists).sum(-1)
        best = int(pot.argmin())
        closest = torch.minimum(closest, dists[best])
        indices.append(candidates[best])
    index = torch.stack(indices)
    return x[index], index


def lloyd(x: Tensor, centres: Tensor, max_iter: int = 300, tol: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm on x (N, D) from centres (k, D), with scikit-learn's ``KMeans``
    stopping rule: the labels no longer change, or the centres moved (squared shift summed
    over centres) by at most ``tol`` times the mean per-feature variance of x, or
    ``max_iter`` updates.  An empty cluster keeps its centre (scikit-learn moves it onto a
    far point).  Returns (centres (k, D), labels (N,)), the labels of the returned centres."""
    threshold = tol * float(_mean_variance(x))
    k = centres.shape[0]
    labels = nearest(x, centres)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        updated = torch.where((counts > 0).unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1), centres)
        shift = float((updated - centres).pow(2).sum())
        centres = updated
        new_labels = nearest(x, centres)
        converged = torch.equal(new_labels, labels) or shift <= threshold
        labels = new_labels
        if converged:
            break
    return centres, labels



def distance_rows(d: int) -> int:
    """Rows per chunk of the distance passes: about 2^18 elements of x, so that a chunk and
    its products stay in cache.  Chunks of CHUNK rows ran the products out of cache: k-means
    on 200,000 x 64 (K=64) spent 2x longer per pass, and torch.cdist on 784-d rows 10x longer
    than the product below (2 threads, AMD EPYC)."""
    return max(1024, min(CHUNK, 2**18 // d))


def nearest(x: Tensor, centres: Tensor) -> Tensor:
    """The index of each row's nearest centre, (N, D), (k, D) -> (N,): the argmin over k of
    ||c_k||^2 - 2 x.c_k, as scikit-learn's Lloyd (||x||^2 is the same for every k)."""
    norms, twice = centres.pow(2).sum(-1), (2 * centres).T  # doubling is exact
    return torch.cat([torch.addmm(norms, xc, twice, alpha=-1).argmin(-1)
                      for xc in torch.split(x, distance_rows(x.shape[1]))])


def squared_distances(points: Tensor, x: Tensor, x_norms: Tensor | None = None) -> Tensor:
    """||p_i - x_n||^2 = ||p_i||^2 - 2 p_i.x_n + ||x_n||^2, clamped at 0, as scikit-learn's
    k-means++: (m, D), (N, D) -> (m, N).  ``x_norms``: ||x_n||^2 (N,) where the caller keeps them."""
    x_norms = row_norms(x) if x_norms is None else x_norms
    p_norms, twice = points.pow(2).sum(-1, keepdim=True), 2 * points
    rows = distance_rows(x.shape[1])
    return torch.cat([torch.addmm(p_norms, twice, xc.T, alpha=-1).add_(xn).clamp_min_(0.0)
                      for xc, xn in zip(torch.split(x, rows), torch.split(x_norms, rows))], dim=1)


def row_norms(x: Tensor) -> Tensor:
    """||x_n||^2, (N, D) -> (N,), a chunk at a time (no temporary the size of x)."""
    return torch.cat([xc.pow(2).sum(-1) for xc in torch.split(x, distance_rows(x.shape[1]))])


def _mean_variance(x: Tensor) -> Tensor:
    """The per-feature variance of x (N, D) averaged over features, in two chunked passes."""
    mean = sum(xc.sum(0, dtype=torch.float64) for xc in torch.split(x, CHUNK)) / x.shape[0]
    return sum((xc.double() - mean).pow(2).sum(0) for xc in torch.split(x, CHUNK)).mean() / x.shape[0]
