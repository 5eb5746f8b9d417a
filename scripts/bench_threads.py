"""torch intra-op threads: 1 vs 2 (or more) on this machine, as ratios measured in one run.

Times (a) deep-GMM training steps (DAGMM, MLP, 784-d inputs, batch 256) and (b) EM E-steps
(200,000 x 32, K=16, full covariance, float32 products), each thread count in its own
subprocess.  On shared machines 1 thread is sometimes much faster than 2: set num_threads
in the config from what this prints, not from the core count.

    python scripts/bench_threads.py [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(threads: int, repeats: int) -> dict:
    import torch

    from dgmm_lab.mixture import em
    from dgmm_lab.mixture.density import MixtureDensity
    from dgmm_lab.models import DeepGMM
    from dgmm_lab.nets.feature_extractor import MLP

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepGMM(MLP((784,), latent_dim=10, hidden=(500, 500)), "dagmm", 4, "full")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(256, 784)

    def deep_step():
        loss, _ = model.objective.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    data = torch.randn(200_000, 32)
    k, d = 16, 32
    mix = MixtureDensity(torch.full((k,), 1 / k).log(), torch.randn(k, d), torch.eye(d).expand(k, d, d).contiguous(), "full")

    def em_step():
        stats = em.SufficientStats.zeros(k, d, "full")
        em.accumulate(stats, data, mix, data.mean(0), torch.float32)

    out = {}
    for name, fn, n in (("deep_step", deep_step, 20), ("em_estep", em_step, 1)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - start) / n)
        out[name] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return
    results = {}
    for t in args.threads:
        out = subprocess.run([sys.executable, __file__, "--child", str(t), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True).stdout
        results[t] = json.loads(out.strip().splitlines()[-1])
    base = results[args.threads[0]]
    print(f"| threads | deep step (ms) | vs {args.threads[0]} thread | EM E-step (s) | vs {args.threads[0]} thread |")
    print("|---|---|---|---|---|")
    for t, r in results.items():
        print(f"| {t} | {1000 * r['deep_step']:.1f} | {base['deep_step'] / r['deep_step']:.2f}x "
              f"| {r['em_estep']:.3f} | {base['em_estep'] / r['em_estep']:.2f}x |")


if __name__ == "__main__":
    main()
