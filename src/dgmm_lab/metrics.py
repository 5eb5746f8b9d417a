"""Metrics in the same units for both models: clustering, density.

The clustering scores are scikit-learn's formulas written out on one contingency table:
importing ``sklearn.metrics`` would cost a default run about 0.2 s of its start-up (issue 21),
and tests/test_metrics.py checks the scores equal scikit-learn's to the last bit.
"""

from __future__ import annotations

from math import log

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(labels, clusters) -> np.ndarray:
    """(n_labels, n_clusters) int64 counts of the pairs, rows and columns in sorted order."""
    _, label_idx = np.unique(np.asarray(labels), return_inverse=True)
    _, cluster_idx = np.unique(np.asarray(clusters), return_inverse=True)
    counts = np.zeros((label_idx.max(initial=-1) + 1, cluster_idx.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(counts, (label_idx.ravel(), cluster_idx.ravel()), 1)
    return counts


def cluster_accuracy(labels, clusters) -> float:
    """Accuracy after the best one-to-one matching of clusters to labels (Hungarian);
    with more clusters than labels the unmatched clusters count as errors."""
    counts = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def adjusted_rand_index(counts: np.ndarray) -> float:
    """Hubert and Arabie's ARI of a contingency table, from the pair counts in Python
    integers (no overflow), as ``sklearn.metrics.adjusted_rand_score``: 1.0 where no pair
    disagrees (an empty table included)."""
    n = int(counts.sum())
    same_both = int((counts**2).sum())
    same_label, same_cluster = int((counts.sum(1) ** 2).sum()), int((counts.sum(0) ** 2).sum())
    tp = same_both - n
    fp, fn = same_cluster - same_both, same_label - same_both
    tn = n * n - fp - fn - same_both
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def normalized_mutual_information(counts: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies (nats), as
    ``sklearn.metrics.normalized_mutual_info_score``: 1.0 where neither side is split, 0.0
    where the information is zero."""
    if counts.shape[0] == counts.shape[1] <= 1:
        return 1.0
    if counts.shape[0] == 1 or counts.shape[1] == 1:
        return 0.0
    table = counts.astype(np.float64)
    rows, cols = np.nonzero(table)  # row-major: the order of scikit-learn's sparse table
    nz = table[rows, cols]
    total = table.sum()
    pi, pj = table.sum(1), table.sum(0)
    outer = pi.take(rows).astype(np.int64) * pj.take(cols).astype(np.int64)
    terms = nz / total * (np.log(nz) - log(total)) + nz / total * (-np.log(outer) + log(pi.sum()) + log(pj.sum()))
    terms = np.where(np.abs(terms) < np.finfo(terms.dtype).eps, 0.0, terms)
    mi = float(np.clip(terms.sum(), 0.0, None))
    if mi == 0:
        return 0.0
    return float(mi / np.mean([_entropy(pi), _entropy(pj)]))


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    return float(-np.sum((counts / total) * (np.log(counts) - log(total))))


def clustering_metrics(labels, clusters) -> dict[str, float]:
    counts = contingency(labels, clusters)
    return {"acc": cluster_accuracy(labels, clusters),
            "nmi": normalized_mutual_information(counts),
            "ari": adjusted_rand_index(counts)}


def anomaly_metrics(is_anomaly, energy, threshold: float | None = None, train_energy=None) -> dict[str, float]:
    """Energy (-log p) as the anomaly score: AUROC, average precision, and DAGMM's protocol:
    flag the top fraction of energies that is the true anomaly rate (it reads the test labels'
    count) as anomalies and report precision, recall and F1.  With a
    ``threshold`` fixed beforehand without labels (the model's, from validation normals: what
    ``predict`` flags by) also ``*_at_threshold``: the numbers a user of the model gets.  With
    the training normals' energies ``train_energy`` also ``f1_dagmm``, the DAGMM paper's: the
    threshold at the percentile of the energies over train and test together that flags the
    data's anomaly fraction (the paper's table; it too reads the labels' count)."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    is_anomaly, energy = np.asarray(is_anomaly).astype(bool), np.asarray(energy, dtype=np.float64)

    def flagging(cut: float, suffix: str = "") -> dict[str, float]:
        p, r, f, _ = precision_recall_fscore_support(is_anomaly, energy > cut, average="binary", zero_division=0)
        return {f"precision{suffix}": float(p), f"recall{suffix}": float(r), f"f1{suffix}": float(f)}

    rate = is_anomaly.mean()
    scores = {"auroc": float(roc_auc_score(is_anomaly, energy)),
              "average_precision": float(average_precision_score(is_anomaly, energy)),
              **flagging(np.quantile(energy, 1 - rate))}
    if threshold is not None:
        scores.update(flagging(threshold, "_at_threshold"))
    if train_energy is not None:
        pooled = np.concatenate([np.asarray(train_energy, dtype=np.float64), energy])
        scores["f1_dagmm"] = flagging(np.quantile(pooled, 1 - is_anomaly.sum() / len(pooled)))["f1"]
    return scores
