"""EM speed and quality: dgmm_lab.GaussianMixture vs scikit-learn, side by side, one run.

Same data, same initial parameters, a fixed number of iterations (tol=0). Each fit runs in
its own subprocess so peak memory (max RSS) is its own; --repeats rounds interleave the
implementations (a fresh process each, two fits in it) and the fastest fit counts:
shared-machine noise only adds time. Prints a Markdown table.

    python scripts/bench_em.py                      # synthetic cases (+ MNIST if available)
    python scripts/bench_em.py --cases synthetic-full --iters 5 --threads 1 2
    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_em.py --cases mnist-pca50-full mnist-784-diag
    python scripts/bench_em.py --device cuda      # ours on the GPU, scikit-learn on --threads cores

Compare times only as ratios within one run: the machine's speed drifts under shared load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

CASES = {
    "mnist-pca50-full": dict(data="mnist-pca50", k=10, cov="full"),
    "mnist-784-diag": dict(data="mnist-784", k=10, cov="diag"),
    **{f"synthetic-{c}": dict(data="synthetic", k=16, cov=c) for c in ("full", "diag", "spherical", "tied")},
}


def load(name: str):
    import numpy as np

    if name == "synthetic":
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=3.0, size=(16, 32))
        labels = rng.integers(16, size=200_000)
        return centres[labels] + rng.normal(size=(200_000, 32)) * rng.uniform(0.5, 2.0, size=(16, 32))[labels]

    from dgmm_lab.data import MNISTDataModule

    root = os.environ["DGMM_LAB_DATA_DIR"]
    dm = MNISTDataModule(data_dir=root, cache_dir=os.environ.get("DGMM_LAB_CACHE_DIR", "data"),
                         flatten=True, val_size=0)
    dm.setup()
    x = dm.tensors("train")[0].double()
    if name == "mnist-pca50":
        from dgmm_lab.nets.feature_extractor import PCA

        x = PCA((784,), 50).fit(x)(x).double()
    return x.numpy()


def initial_parameters(x, k: int, cov: str):
    """Start values both implementations get: one k-means-initialised sklearn M-step."""
    import warnings

    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(k, covariance_type=cov, max_iter=1, random_state=0, reg_covar=1e-4).fit(x)
    return dict(weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_)


def fit_one(case: str, impl: str, iters: int, threads: int, compute_dtype: str, device: str = "cpu",
            fits: int = 2) -> dict:
    """Runs inside the subprocess: the faster of ``fits`` identical fits (the first one
    also pays one-time costs: library start-up, first touch of memory)."""
    import resource
    import warnings

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    spec = CASES[case]
    x = load(spec["data"])
    init = initial_parameters(x, spec["k"], spec["cov"])
    kwargs = dict(covariance_type=spec["cov"], max_iter=iters, tol=0.0, reg_covar=1e-4, **init)
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "sklearn":
            from sklearn.mixture import GaussianMixture
            model = GaussianMixture(spec["k"], **kwargs)
        else:
            from dgmm_lab import GaussianMixture
            model = GaussianMixture(spec["k"], compute_dtype=compute_dtype, batch_size=65536, device=device,
                                    **kwargs)
        seconds = math.inf
        for _ in range(fits):
            start = time.perf_counter()
            model.fit(x)
            seconds = min(seconds, time.perf_counter() - start)
    if impl == "ours" and device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(seconds=seconds, loglik=float(model.score(x)), peak_mb=peak_mb, n=x.shape[0], d=x.shape[1])


def run_in_subprocess(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cases = [c for c in CASES if c.startswith("synthetic") or os.environ.get("DGMM_LAB_DATA_DIR")]
    parser.add_argument("--cases", nargs="+", default=default_cases, choices=list(CASES))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (sklearn, ours f64, ours f32), each a fresh process; the fastest counts")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--device", default="cpu", help="where ours runs (cpu, cuda); scikit-learn runs on the CPU")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_one(*json.loads(args.child))))
        return
    print(f"EM, {args.iters} iterations from the same start, tol=0, fastest of {args.repeats} rounds x 2 fits; "
          f"ours on {args.device}" + (" (its peak MB: GPU memory allocated)" if args.device != "cpu" else "") + "\n")
    print("| case | N x D, K | threads | sklearn s | ours f64 s | ours f32 s | speed-up f64 | speed-up f32 "
          "| loglik sklearn | diff f64 | diff f32 | peak MB sklearn / f64 / f32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        for threads in args.threads:
            # rounds interleave the three, so a burst of load on the machine hits all alike
            runs = {"sk": [], "f64": [], "f32": []}
            for _ in range(args.repeats):
                for name, impl, dtype in (("sk", "sklearn", "float64"), ("f64", "ours", "float64"),
                                          ("f32", "ours", "float32")):
                    runs[name].append(run_in_subprocess(case, impl, args.iters, threads, dtype, args.device))
            sk, f64, f32 = (min(runs[name], key=lambda r: r["seconds"]) for name in ("sk", "f64", "f32"))
            print(f"| {case} | {sk['n']} x {sk['d']}, {CASES[case]['k']} | {threads} "
                  f"| {sk['seconds']:.2f} | {f64['seconds']:.2f} | {f32['seconds']:.2f} "
                  f"| {sk['seconds'] / f64['seconds']:.2f}x | {sk['seconds'] / f32['seconds']:.2f}x "
                  f"| {sk['loglik']:.6f} | {f64['loglik'] - sk['loglik']:.1e} | {f32['loglik'] - sk['loglik']:.1e} "
                  f"| {sk['peak_mb']:.0f} / {f64['peak_mb']:.0f} / {f32['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
