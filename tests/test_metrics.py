"""Metrics against scikit-learn on random labelings and scores, ties and K != classes included."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    confusion_matrix,
    normalized_mutual_info_score,
    roc_auc_score,
)

from dgmm_lab.metrics import anomaly_metrics, cluster_accuracy, clustering_metrics


def brute_force_accuracy(labels, clusters):
    cm = confusion_matrix(clusters, labels, labels=np.union1d(labels, clusters))
    rows, cols = linear_sum_assignment(-cm)
    return cm[rows, cols].sum() / len(labels)


@pytest.mark.parametrize("k", [3, 10, 14])
@pytest.mark.parametrize("seed", range(3))
def test_clustering_metrics_match_references(k, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(10, size=1000)
    clusters = np.where(rng.random(1000) < 0.7, labels % k, rng.integers(k, size=1000)) + 100
    m = clustering_metrics(labels, clusters)
    assert m["acc"] == pytest.approx(brute_force_accuracy(labels, clusters), abs=1e-12)
    assert m["nmi"] == normalized_mutual_info_score(labels, clusters)  # the same formulas, to the bit
    assert m["ari"] == adjusted_rand_score(labels, clusters)


@pytest.mark.parametrize("labels, clusters", [
    ([0, 0, 1, 1], [1, 1, 0, 0]), ([0, 0, 1, 2], [0, 0, 1, 1]), ([0, 0, 0, 0], [0, 1, 2, 3]),
    ([0, 1, 2, 3], [0, 0, 0, 0]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([3, 3, 3], [7, 7, 7]), ([5], [2]),
    ([0, 1], [0, 1]), (["b", "a", "a"], [2, 2, -1])])
def test_clustering_metrics_equal_sklearns_at_the_limits(labels, clusters):
    m = clustering_metrics(labels, clusters)
    assert (m["nmi"], m["ari"]) == (normalized_mutual_info_score(labels, clusters),
                                    adjusted_rand_score(labels, clusters))


@pytest.mark.parametrize("seed", range(20))
def test_clustering_metrics_equal_sklearns_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    n, classes, k = rng.integers(2, 5000), rng.integers(1, 30), rng.integers(1, 30)
    labels, clusters = rng.integers(classes, size=n), rng.integers(k, size=n)
    clusters = np.where(rng.random(n) < rng.random(), labels, clusters)  # from noise to agreement
    m = clustering_metrics(labels, clusters)
    assert m["nmi"] == normalized_mutual_info_score(labels, clusters)
    assert m["ari"] == adjusted_rand_score(labels, clusters)


def test_accuracy_is_one_under_relabeling_and_chance_for_noise():
    labels = np.repeat(np.arange(5), 200)
    assert cluster_accuracy(labels, (labels + 3) % 5 + 7) == 1.0
    noise = np.random.default_rng(0).integers(5, size=1000)
    assert cluster_accuracy(labels, noise) < 0.3


@pytest.mark.parametrize("seed", range(3))
def test_anomaly_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(500) < 0.2
    energy = np.round(rng.normal(size=500) + 1.5 * y, 1)  # rounding makes ties
    m = anomaly_metrics(y, energy)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, energy), abs=1e-9)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, energy), abs=1e-9)
    flagged = energy > np.quantile(energy, 1 - y.mean())
    tp = (flagged & y).sum()
    assert m["precision"] == pytest.approx(tp / flagged.sum(), abs=1e-12)
    assert m["recall"] == pytest.approx(tp / y.sum(), abs=1e-12)
    assert m["f1"] == pytest.approx(2 * tp / (flagged.sum() + y.sum()), abs=1e-12)


def test_anomaly_metrics_at_a_given_threshold_are_sklearns_on_the_flags():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.1
    energy = rng.normal(size=400) + 2.0 * y
    m = anomaly_metrics(y, energy, threshold=1.0)
    precision, recall, f1, _ = precision_recall_fscore_support(y, energy > 1.0, average="binary")
    assert (m["precision_at_threshold"], m["recall_at_threshold"], m["f1_at_threshold"]) == (precision, recall, f1)
    assert "f1_at_threshold" not in anomaly_metrics(y, energy)


def test_the_dagmm_papers_f1_places_its_threshold_over_train_and_test():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(4)
    train = rng.normal(size=300)
    y = np.r_[np.zeros(300), np.ones(30)].astype(bool)
    energy = np.r_[rng.normal(size=300), rng.normal(2.5, 1.0, size=30)]
    pooled = np.r_[train, energy]
    cut = np.sort(pooled)[::-1][30]  # 30 anomalies among 630: the 30 highest energies of all
    m = anomaly_metrics(y, energy, train_energy=train)
    assert m["f1_dagmm"] == pytest.approx(f1_score(y, energy > cut), abs=0.02)
    assert m["f1_dagmm"] != m["f1"]  # another threshold than the test set's own rate
