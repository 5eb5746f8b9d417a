"""scikit-learn's anomaly detectors on the project's own splits: reference columns for the
ODDS table in docs/benchmarks.md, which the project's sweeps cannot produce.

For each set and seed the split is the one a run with ``data=array data.normal_label=0
data.test_fraction=0.5 data.split_seed=SEED`` trains and tests on (the project's
ArrayDataModule builds it, with its standardisation fitted on the training normals), so the
numbers sit beside the sweep's.  Scored like the runs (``dgmm_lab.metrics.anomaly_metrics``):

- ``sklearn GMM`` full, K in --ks chosen per seed by the validation normals' NLL (as
  ``report.choose=[k]`` does for the project's EM);
- ``IsolationForest`` (200 trees, random_state=SEED).

    DGMM_LAB_ODDS_DIR=../shared/data/odds python scripts/bench_anomaly_refs.py
    python scripts/bench_anomaly_refs.py --sets cardio --seeds 0 1 --ks 1 2 4
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture

from dgmm_lab.data.arrays import ArrayDataModule
from dgmm_lab.metrics import anomaly_metrics

METRICS = ("auroc", "average_precision", "f1")


def split(path: Path, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = ArrayDataModule(str(path), label="y", normal_label=0, test_fraction=0.5, split_seed=seed)
    return {name: tuple(t.numpy().astype(np.float64) for t in data.tensors(name)) for name in ("train", "val", "test")}


def gmm_scores(parts, seed: int, ks: list[int]) -> tuple[np.ndarray, int]:
    (x, _), (xv, _), (xt, _) = parts["train"], parts["val"], parts["test"]
    fits = [GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=seed).fit(x) for k in ks]
    best = min(fits, key=lambda g: -g.score(xv))  # the validation normals' NLL
    return -best.score_samples(xt), best.n_components


def forest_scores(parts, seed: int) -> np.ndarray:
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(parts["train"][0])
    return -forest.score_samples(parts["test"][0])  # higher = more anomalous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--odds-dir", default=os.environ.get("DGMM_LAB_ODDS_DIR"))
    parser.add_argument("--sets", nargs="+", default=["cardio", "satellite", "satimage-2", "shuttle", "mnist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    logging.getLogger("dgmm_lab").setLevel(logging.ERROR)  # the runs' column warnings: said in their own logs
    if not args.odds_dir:
        parser.error("--odds-dir or DGMM_LAB_ODDS_DIR: the folder holding cardio.mat, ...")
    print(f"seeds {args.seeds}; sklearn GMM K in {args.ks} by validation NLL\n")
    print("| set | method | AUROC | AP | F1 | K chosen | seconds per fit |\n|---|---|---|---|---|---|---|")
    for name in args.sets:
        rows = {"sklearn GMM (full)": [], "IsolationForest": []}
        chosen, seconds = {m: [] for m in rows}, {m: [] for m in rows}
        for seed in args.seeds:
            parts = split(Path(args.odds_dir) / f"{name}.mat", seed)
            y = parts["test"][1]
            for method in rows:
                start = time.perf_counter()
                if method == "IsolationForest":
                    scores, k = forest_scores(parts, seed), None
                else:
                    scores, k = gmm_scores(parts, seed, args.ks)
                seconds[method].append(time.perf_counter() - start)
                chosen[method].append(k)
                rows[method].append(anomaly_metrics(y, scores))
        for method, results in rows.items():
            cells = []
            for m in METRICS:
                values = [r[m] for r in results]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.3f} ± {spread:.3f}")
            ks = ", ".join(f"k={k} ×{chosen[method].count(k)}" for k in sorted(set(chosen[method]))) \
                if chosen[method][0] is not None else ""
            print(f"| {name} | {method} | {' | '.join(cells)} | {ks} | {statistics.fmean(seconds[method]):.2f} |")


if __name__ == "__main__":
    main()
