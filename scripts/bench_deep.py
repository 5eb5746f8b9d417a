"""MNIST clustering: deep objectives against EM-GMM on PCA-50 features, over seeds, one run.

Runs ``python -m dgmm_lab.train`` for each method and seed (K=10), reads each job's
metrics.json and prints accuracy (Hungarian-matched), NMI and ARI as mean +- std, with the
wall time of each method.  Published anchors: k-means ~53%, DEC 84-86%, IDEC 88%, VaDE 94.5%
(best run, full MNIST, 300 epochs on a GPU).

    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_deep.py --seeds 0 1 2  # the presets as they are
    python scripts/bench_deep.py --limit-train 10000 --epochs 10 --pretrain-epochs 10  # CPU-sized
    python scripts/bench_deep.py --epochs 300 --override trainer=gpu  # extra overrides for every run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = {
    "em_gmm (PCA-50, full)": ["experiment=em_mnist_pca"],
    "vade (MLP 500-500-2000)": ["experiment=vade_mnist", "objective.pretrain_epochs={pre}",
                                "trainer.max_epochs={epochs}"],
    "dagmm (MLP)": ["model=deep_gmm", "objective=dagmm", "backbone=mlp", "backbone.hidden=[500,500]",
                    "covariance=full", "trainer.max_epochs={epochs}"],
}


def train(method: str, seed: int, args, out_root: Path) -> tuple[dict, float]:
    """One ``python -m dgmm_lab.train`` run; returns its metrics.json and wall seconds."""
    run_dir = out_root / f"{method.split()[0]}_{seed}"
    # an epoch setting left out keeps the preset's (or the trainer's) value
    settings = {"epochs": args.epochs, "pre": args.pretrain_epochs}
    overrides = [o.format(**settings) for o in METHODS[method]
                 if not any(value is None and f"{{{name}}}" in o for name, value in settings.items())]
    overrides += ["data=mnist", "k=10", f"seed={seed}", "trainer.enable_progress_bar=false",
                  f"num_threads={args.threads}", f"hydra.run.dir={run_dir}"]
    if args.limit_train:
        overrides.append(f"data.limit_train={args.limit_train}")
    overrides += args.override
    start = time.perf_counter()
    log_file = out_root / f"{run_dir.name}.log"
    with open(log_file, "w") as log:
        done = subprocess.run([sys.executable, "-m", "dgmm_lab.train", *overrides], stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{method}, seed {seed} failed with exit code {done.returncode}; the end of "
                           f"{log_file}:\n{log_file.read_text()[-3000:]}")
    seconds = time.perf_counter() - start
    print(f"done: {method}, seed {seed}, {seconds:.0f} s", file=sys.stderr, flush=True)
    return json.loads((run_dir / "metrics.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="VaDE pre-training epochs (default: the preset's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with --threads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides added to every run")
    args = parser.parse_args()
    out_root = Path(tempfile.mkdtemp(prefix="bench_deep_"))
    runs = [(method, seed) for method in args.methods for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(runs, pool.map(lambda run: train(*run, args, out_root), runs)))
    rows = []
    for method in args.methods:
        scores = [results[method, seed][0] for seed in args.seeds]
        seconds = statistics.mean(results[method, seed][1] for seed in args.seeds)
        cells = []
        for key in ("test/acc", "test/nmi", "test/ari"):
            values = [s[key] for s in scores]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} +- {spread:.3f}")
        rows.append((method, *cells, f"{seconds:.0f}"))
    extra = f", overrides {' '.join(args.override)}" if args.override else ""
    epochs, pre = ("preset" if n is None else n for n in (args.epochs, args.pretrain_epochs))
    print(f"MNIST clustering, K=10, seeds {args.seeds}, limit_train={args.limit_train}, "
          f"epochs={epochs}, pre-training epochs={pre}, {args.jobs} run(s) at a time "
          f"with {args.threads} thread(s) each{extra}\n")
    print("| method | accuracy | NMI | ARI | seconds per run |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nruns under {out_root}")


if __name__ == "__main__":
    main()
