"""k-means for EM's start values: k-means++ seeding and Lloyd's iterations, in torch."""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator,
                     n_local_trials: int | None = None) -> tuple[Tensor, Tensor]:
    """Greedy k-means++ seeding, as scikit-learn's ``kmeans_plusplus`` (its own random
    stream, not numpy's): (N, D) -> centres (k, D) and their row indices (k,)."""
    n = x.shape[0]
    n_local_trials = n_local_trials or 2 + int(torch.tensor(float(k)).log())
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    indices = [first[0]]
    closest = (x - x[first[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: take any remaining point
            indices.append(torch.randint(n, (1,), generator=generator, device=x.device)[0])
            continue
        candidates = torch.multinomial(closest / total, n_local_trials, replacement=True,
                                       generator=generator)
        dists = torch.cdist(x[candidates], x).pow(2)
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
    threshold = tol * float(x.var(0, unbiased=False).mean())
    k = centres.shape[0]
    labels = torch.cdist(x, centres).argmin(-1)
    for _ in range(max_iter):
        one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
        counts = one_hot.sum(0)
        updated = torch.where((counts > 0).unsqueeze(-1), (one_hot.T @ x) / counts.clamp_min(1).unsqueeze(-1),
                              centres)
        shift = float((updated - centres).pow(2).sum())
        centres = updated
        new_labels = torch.cdist(x, centres).argmin(-1)
        converged = torch.equal(new_labels, labels) or shift <= threshold
        labels = new_labels
        if converged:
            break
    return centres, labels
