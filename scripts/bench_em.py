"""EM speed and quality: dgmm_lab.GaussianMixture vs scikit-learn, side by side, one run.

Same data in the same dtype, same initial parameters, a fixed number of iterations (tol=0).
Each fit runs in its own subprocess so peak memory (max RSS) is its own; --repeats rounds
interleave the implementations (a fresh process each, two fits in it) and the fastest fit
counts: shared-machine noise only adds time. Prints Markdown tables:

- EM from the same start, float64 and float32 input (scikit-learn computes in the input's
  dtype since 1.7, as we do), with a roofline column for full covariance: the nominal
  4 N K D^2 FLOP of an iteration (the (N, D) @ (D, K*D) log-density product and the
  (K*D, N) @ (N, D) second moments) per second, against the peak this process measures for
  that product's shape and dtype on the same threads;
- with --end-to-end, each library's default k-means start included (and ours from an
  init_max_samples sample), a fixed number of iterations.

    python scripts/bench_em.py                      # synthetic cases (+ MNIST if available)
    python scripts/bench_em.py --cases synthetic-full --iters 5 --threads 1 2
    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_em.py --cases mnist-pca50-full mnist-784-diag
    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_em.py --end-to-end --iters 10
    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_em.py --end-to-end --cases mnist-pca50-k64 --before ../old/src
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
    "synthetic-20k-full": dict(data="synthetic-20k", k=16, cov="full"),  # the script's quick check (tests)
}
END_TO_END = {
    # sample: the rows ours starts from in the table's third fit (init_max_samples)
    "mnist-pca50-k64": dict(data="mnist-pca50", k=64, cov="full", sample=10_000),
    "blobs-1m-k64": dict(data="blobs-1m", k=64, cov="full", sample=100_000),
}


def load(name: str):
    import numpy as np

    if name == "blobs-1m":  # the memory test's data: 64 blobs along the first axis
        x = np.random.default_rng(0).standard_normal((1_000_000, 64))
        x[:, 0] += np.arange(len(x)) % 64 * 3.0
        return x
    if name == "synthetic-20k":
        return load("synthetic")[:20_000]
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


def peak_gflops(n: int, d: int, k: int, dtype: str, device: str = "cpu") -> float:
    """The best rate of the full-covariance E-step's product, (rows, D) @ (D, K*D), with the
    chunk rows the E-step uses, on this process's threads: the floor's denominator."""
    import torch

    from dgmm_lab.mixture.em import chunk_rows

    rows = min(n, chunk_rows(k, d, "full"))
    a = torch.randn(rows, d, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(d, k * d, dtype=a.dtype, device=device)
    out = torch.empty(rows, k * d, dtype=a.dtype, device=device)
    best = math.inf
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * rows * d * k * d / best / 1e9


def fit_one(case: str, impl: str, iters: int, threads: int, dtype: str, device: str = "cpu",
            fits: int = 2, end_to_end: bool = False, init_max_samples: int | None = None) -> dict:
    """Runs inside the subprocess: the faster of ``fits`` identical fits (the first one
    also pays one-time costs: library start-up, first touch of memory). ``end_to_end``:
    each library's default (k-means) start, timed with the fit."""
    import resource
    import warnings

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    spec = (END_TO_END if end_to_end else CASES)[case]
    x = load(spec["data"])
    start_values = {} if end_to_end else initial_parameters(x, spec["k"], spec["cov"])
    x = x.astype(dtype)  # each library computes in its input's dtype
    kwargs = dict(covariance_type=spec["cov"], max_iter=iters, tol=0.0, random_state=0,
                  **(start_values and dict(reg_covar=1e-4, **start_values)))
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "sklearn":
            from sklearn.mixture import GaussianMixture
            model = GaussianMixture(spec["k"], **kwargs)
        else:
            from dgmm_lab import GaussianMixture
            model = GaussianMixture(spec["k"], device=device, init_max_samples=init_max_samples, **kwargs)
        seconds = math.inf
        for _ in range(fits):
            start = time.perf_counter()
            model.fit(x)
            seconds = min(seconds, time.perf_counter() - start)
        peak = peak_gflops(*x.shape, spec["k"], dtype, device) if spec["cov"] == "full" else math.nan
    if impl == "ours" and device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n, d = x.shape
    achieved = iters * 4 * n * spec["k"] * d * d / seconds / 1e9
    loglik = float(np.mean(model.score_samples(x).astype(np.float64)))
    return dict(seconds=seconds, loglik=loglik, peak_mb=peak_mb, n=n, d=d, gflops=achieved,
                peak_gflops=peak, n_iter=int(model.n_iter_))


def run_in_subprocess(*args, src: str | None = None) -> dict:
    """fit_one(*args) in a fresh process; ``src``: the dgmm_lab checkout it imports (--before)."""
    env = dict(os.environ, PYTHONPATH=src) if src else None
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rate(r: dict) -> str:
    """Nominal GFLOP/s and its share of the measured product peak (full covariance only)."""
    if math.isnan(r["peak_gflops"]):
        return "-"
    return f"{r['gflops']:.0f} of {r['peak_gflops']:.0f} ({r['gflops'] / r['peak_gflops']:.0%})"


def machine() -> str:
    """The CPU and library versions: the ratios depend on them (scikit-learn's OpenBLAS against
    torch's MKL on an AMD CPU is not the same contest as on an Intel one)."""
    import platform

    import numpy as np
    import sklearn
    import torch

    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), cpu)
    return (f"{cpu} (torch's CPU capability {torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
            f"scikit-learn {sklearn.__version__}, numpy {np.__version__}")


def same_start_table(args) -> None:
    print(machine())
    print(f"EM, {args.iters} iterations from the same start, tol=0, fastest of {args.repeats} rounds x 2 fits; "
          f"ours on {args.device}" + (" (its peak MB: GPU memory allocated)" if args.device != "cpu" else "") + "\n")
    print("| case | N x D, K | threads | sklearn f64 s | ours f64 s | speed-up f64 | sklearn f32 s | ours f32 s "
          "| speed-up f32 | loglik sklearn f64 | diff ours f64 | diff sklearn f32 | diff ours f32 "
          "| ours GFLOP/s f64 (of peak) | ours GFLOP/s f32 (of peak) | peak MB sklearn / ours f64 / f32 |")
    print("|" + "---|" * 16)
    names = (("sk64", "sklearn", "float64"), ("f64", "ours", "float64"), ("sk32", "sklearn", "float32"),
             ("f32", "ours", "float32"))
    for case in args.cases:
        for threads in args.threads:
            # rounds interleave the four, so a burst of load on the machine hits all alike
            runs = {name: [] for name, _, _ in names}
            for _ in range(args.repeats):
                for name, impl, dtype in names:
                    runs[name].append(run_in_subprocess(case, impl, args.iters, threads, dtype, args.device))
            sk64, f64, sk32, f32 = (min(runs[name], key=lambda r: r["seconds"]) for name, _, _ in names)
            ref = sk64["loglik"]
            print(f"| {case} | {sk64['n']} x {sk64['d']}, {CASES[case]['k']} | {threads} "
                  f"| {sk64['seconds']:.2f} | {f64['seconds']:.2f} | {sk64['seconds'] / f64['seconds']:.2f}x "
                  f"| {sk32['seconds']:.2f} | {f32['seconds']:.2f} | {sk32['seconds'] / f32['seconds']:.2f}x "
                  f"| {ref:.6f} | {f64['loglik'] - ref:.1e} | {sk32['loglik'] - ref:.1e} | {f32['loglik'] - ref:.1e} "
                  f"| {rate(f64)} | {rate(f32)} "
                  f"| {sk64['peak_mb']:.0f} / {f64['peak_mb']:.0f} / {f32['peak_mb']:.0f} |", flush=True)


def end_to_end_table(args) -> None:
    print(machine())
    print(f"\nEnd to end: each library's default start (k-means) and {args.iters} EM iterations (tol=0), "
          f"float64, {args.threads[0]} threads, fastest of {args.repeats} processes x 1 fit\n")
    print("| case | N x D, K | fit | seconds | vs sklearn | iterations | mean log-likelihood | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for case in [c for c in args.cases if c in END_TO_END] or list(END_TO_END):
        spec = END_TO_END[case]
        fits = [("scikit-learn", "sklearn", None, None), ("ours", "ours", None, None),
                (f"ours, start from {spec['sample']} rows (init_max_samples)", "ours", spec["sample"], None)]
        if args.before:
            fits.append(("ours before (older code)", "ours", None, args.before))
        runs = {label: [] for label, *_ in fits}
        for _ in range(args.repeats):
            for label, impl, sample, src in fits:
                runs[label].append(run_in_subprocess(case, impl, args.iters, args.threads[0], "float64", args.device,
                                                     1, True, sample, src=src))
        best = {label: min(r, key=lambda r: r["seconds"]) for label, r in runs.items()}
        sk = best["scikit-learn"]["seconds"]
        for label, r in best.items():
            print(f"| {case} | {r['n']} x {r['d']}, {spec['k']} | {label} | {r['seconds']:.1f} "
                  f"| {sk / r['seconds']:.2f}x | {r['n_iter']} | {r['loglik']:.4f} | {r['peak_mb']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cases = [c for c in CASES if (c.startswith("synthetic") or os.environ.get("DGMM_LAB_DATA_DIR"))
                     and c != "synthetic-20k-full"]
    parser.add_argument("--cases", nargs="+", default=default_cases, choices=[*CASES, *END_TO_END],
                        help="with --end-to-end: some of " + ", ".join(END_TO_END) + " (default: all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of the implementations, each a fresh process; the fastest counts")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--device", default="cpu", help="where ours runs (cpu, cuda); scikit-learn runs on the CPU")
    parser.add_argument("--end-to-end", action="store_true",
                        help="only the end-to-end table (default starts included) on " + ", ".join(END_TO_END))
    parser.add_argument("--before", help="with --end-to-end: also ours from this checkout's src/ (older code)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_one(*json.loads(args.child))))
        return
    if not args.end_to_end and set(args.cases) & set(END_TO_END):
        parser.error(f"{', '.join(END_TO_END)} are cases of --end-to-end")
    if args.end_to_end:
        end_to_end_table(args)
    else:
        same_start_table(args)


if __name__ == "__main__":
    main()
