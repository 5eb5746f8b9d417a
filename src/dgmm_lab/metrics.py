"""Metrics in the same units for both models: clustering, density."""

from __future__ import annotations

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
