"""Metrics in the same units for both models: clustering, density."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def cluster_accuracy(labels, clusters) -> float:
    """Accuracy after the best one-to-one matching of clusters to labels (Hungarian);
    with more clusters than labels the unmatched clusters count as errors."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    _, label_idx = np.unique(labels, return_inverse=True)
    _, cluster_idx = np.unique(clusters, return_inverse=True)
    counts = np.zeros((cluster_idx.max() + 1, label_idx.max() + 1), dtype=np.int64)
    np.add.at(counts, (cluster_idx, label_idx), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / labels.size)


def clustering_metrics(labels, clusters) -> dict[str, float]:
    return {"acc": cluster_accuracy(labels, clusters),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}


def bits_per_dim(nll_nats: float, dim: int) -> float:
    return nll_nats / (dim * math.log(2))
