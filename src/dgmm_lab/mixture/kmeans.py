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


def lloyd(x: Tensor, centres: Tensor, n_iter: int = 10) -> tuple[Tensor, Tensor]:
    """A few Lloyd iterations; empty clusters keep their centre.  Returns (centres, labels)."""
    labels = torch.cdist(x, centres).argmin(-1)
    for _ in range(n_iter):
        one_hot = torch.nn.functional.one_hot(labels, centres.shape[0]).to(x.dtype)
        counts = one_hot.sum(0)
        sums = one_hot.T @ x
        keep = counts > 0
        centres = torch.where(keep.unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1), centres)
        new_labels = torch.cdist(x, centres).argmin(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centres, labels
