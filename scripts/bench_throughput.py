"""Training throughput, side by side in one run: a plain PyTorch DAGMM step loop (the
reference implementation's network, written here) against our Lightning epoch, end to end
through the user's command, with the epoch's profile.

    python scripts/bench_throughput.py                          # DAGMM, 200k x 118, 1 and 2 threads
    python scripts/bench_throughput.py --rows 494021 --epochs 3 --rounds 3
    python scripts/bench_throughput.py --before ../old/src      # also the same command on older code
    python scripts/bench_throughput.py --startup                # only the start-up table
    DGMM_LAB_DATA_DIR=../shared/data python scripts/bench_throughput.py --vade --before ../old/src

Rows of the table (samples of the training split per second; rounds interleave them, the
median counts):
- "plain steps": the reference network (118-60-30-10-1 tanh compression and its mirror,
  estimation net 10 with dropout 0.5, K=4, batch 1024, Adam) and its step's arithmetic as the
  reference writes it (our own code), on batches gathered in advance;
- "plain epoch, per-row loader": the same steps fed by DataLoader(TensorDataset) as the
  reference feeds them;
- "ours": ``python -m dgmm_lab.train experiment=dagmm_paper data.path=...``: the mean
  ``train/seconds_per_epoch`` of epochs 2.. (validation and DAGMM's training-set pass
  included); the profile splits that time (Lightning's SimpleProfiler, all epochs).
Data: a KDD-sized synthetic array (a 4-blob mixture in 118 columns), written to a temporary
.npy. Compare figures only within one run: the machine's speed drifts under shared load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the plain loop
def plain_dagmm(d: int, k: int = 4):
    """The DAGMM reference network in plain torch: (encoder, decoder, estimation net)."""
    import torch
    from torch import nn

    def mlp(sizes, last_tanh=False):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or last_tanh:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers)

    encoder, decoder = mlp([d, 60, 30, 10, 1]), mlp([1, 10, 30, 60, d])
    estimation = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Dropout(0.5), nn.Linear(10, k), nn.Softmax(dim=1))
    return nn.ModuleList([encoder, decoder, estimation])


def plain_step(nets, x, optimizer):
    """One DAGMM step written as the reference writes it: the batch's GMM by broadcast sums,
    then per component an inverse and a Cholesky determinant, the energy by a stabilised
    log-sum-exp; loss = squared reconstruction error + 0.1 energy + 0.005 sum 1/diag(cov)."""
    import torch

    encoder, decoder, estimation = nets
    code = encoder(x)
    rec = decoder(code)
    rel = (x - rec).norm(dim=1, keepdim=True) / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(x, rec, dim=1).unsqueeze(1)
    z = torch.cat([code, rel, cos], dim=1)
    gamma = estimation(z)
    n_k = gamma.sum(0)
    phi = n_k / len(x)
    mu = (gamma.unsqueeze(-1) * z.unsqueeze(1)).sum(0) / n_k.unsqueeze(-1)
    z_mu = z.unsqueeze(1) - mu.unsqueeze(0)
    cov = (gamma[..., None, None] * (z_mu.unsqueeze(-1) * z_mu.unsqueeze(-2))).sum(0) / n_k[:, None, None]
    inverses, dets, cov_diag = [], [], 0
    eye = torch.eye(z.shape[1])
    for k in range(cov.shape[0]):
        cov_k = cov[k] + eye * 1e-12
        inverses.append(torch.linalg.inv(cov_k))
        dets.append(torch.linalg.cholesky(cov_k * 2 * torch.pi).diagonal().prod())
        cov_diag = cov_diag + (1 / cov_k.diagonal()).sum()
    inverse, det = torch.stack(inverses), torch.stack(dets)
    exponent = -0.5 * ((z_mu.unsqueeze(-1) * inverse.unsqueeze(0)).sum(-2) * z_mu).sum(-1)
    top = exponent.clamp(min=0).max(dim=1, keepdim=True).values
    energy = -top.squeeze(1) - torch.log((phi * torch.exp(exponent - top) / det.sqrt()).sum(1) + 1e-12)
    loss = (x - rec).pow(2).sum(1).mean() + 0.1 * energy.mean() + 0.005 * cov_diag
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def plain_loop(path: str, threads: int, per_row: bool, n_train: int, batch: int, epochs: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(path)).float()
    x = x[:n_train]
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    nets = plain_dagmm(x.shape[1])
    optimizer = torch.optim.Adam(nets.parameters(), lr=1e-4)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        if per_row:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=batch, shuffle=True)
            for (xb,) in loader:
                plain_step(nets, xb, optimizer)
        else:
            order = torch.randperm(len(x))
            batches = [x[order[i:i + batch]] for i in range(0, len(x), batch)]
            start = time.perf_counter()  # batches gathered in advance: the steps alone
            for xb in batches:
                plain_step(nets, xb, optimizer)
        times.append(time.perf_counter() - start)
    return {"samples_per_s": len(x) / statistics.mean(times[1:] or times)}


# --------------------------------------------------------------------------- our command
PROFILED = {  # parts of Lightning's run_training_epoch (which includes validation)
    "steps (forward, backward, optimiser)": ["run_training_batch"],
    "loading the training batches": ["[_TrainingEpochLoop].train_dataloader_next"],
    "training-set pass (DAGMM)": ["[LightningModule]DeepGMM.on_validation_epoch_start"],
    "validation loop": ["[_EvaluationLoop].val_next", "[Strategy]SingleDeviceStrategy.validation_step",
                        "[LightningModule]DeepGMM.on_validation_epoch_end"],
    "pictures (TensorBoard)": ["[Callback]MixturePictures.on_validation_epoch_end"],
    "checkpoints": ["save_checkpoint"],
}


def our_epoch(path: str, threads: int, epochs: int, src: str | None, overrides: list[str], n_train: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        env = dict(os.environ, PYTHONPATH=src or str(ROOT / "src"))
        command = [sys.executable, "-m", "dgmm_lab.train", *overrides, *([f"data.path={path}"] if path else []),
                   f"trainer.max_epochs={epochs}", f"num_threads={threads}", f"hydra.run.dir={run_dir}",
                   "+trainer.profiler._target_=pytorch_lightning.profilers.SimpleProfiler",
                   f"+trainer.profiler.dirpath={run_dir}", "+trainer.profiler.filename=profile"]
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=run_dir)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        seconds = epoch_seconds(Path(run_dir))
        profile = read_profile(Path(run_dir) / "fit-profile.txt")
    per_epoch = statistics.mean(seconds[1:] or seconds)
    return {"samples_per_s": n_train / per_epoch, "seconds_per_epoch": per_epoch,
            "wall": wall, "epochs": seconds, "profile": profile}


def epoch_seconds(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next(run_dir.rglob("events.out.tfevents*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/seconds_per_epoch")]


def read_profile(path: Path) -> dict[str, float]:
    """Total seconds per action of Lightning's SimpleProfiler report (its columns: action,
    mean duration, calls, total time, percentage)."""
    totals = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 7 and cells[1] and cells[1] != "Action":
            try:
                totals[cells[1]] = float(cells[4])
            except ValueError:
                pass
    return totals


# --------------------------------------------------------------------------- start-up
def startup_table(rounds: int, before: str | None) -> None:
    """Wall and CPU seconds of the import floor and of the default job (``python -m
    dgmm_lab.train``), interleaved; "above the floor" is the median of each round's difference
    to that round's floor (the floor itself drifts by seconds under shared load)."""
    import resource

    commands = {"import floor: python -c 'import pytorch_lightning, hydra'":
                [sys.executable, "-c", "import pytorch_lightning, hydra"]}
    for label, src in (("default job: python -m dgmm_lab.train", None),
                       ("default job, older code", before)):
        if label.endswith("older code") and not src:
            continue
        commands[label] = (src or str(ROOT / "src"), [sys.executable, "-m", "dgmm_lab.train"])
    walls = {label: [] for label in commands}
    cpus = {label: [] for label in commands}
    for _ in range(rounds):
        for label, command in commands.items():
            src, argv = command if isinstance(command, tuple) else (str(ROOT / "src"), command)
            with tempfile.TemporaryDirectory() as run_dir:
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run([*argv, *([f"hydra.run.dir={run_dir}"] if "dgmm_lab.train" in argv else [])],
                               capture_output=True, check=True, cwd=run_dir, env=dict(os.environ, PYTHONPATH=src))
                walls[label].append(time.perf_counter() - start)
                now = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus[label].append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
    floor_label = next(iter(walls))

    def above(values: dict, label: str) -> float:
        return statistics.median(a - b for a, b in zip(values[label], values[floor_label]))

    print(f"\nStart-up, median of {rounds} interleaved rounds\n")
    print("| command | wall seconds | above the floor | CPU seconds | above the floor |")
    print("|---|---|---|---|---|")
    for label in walls:
        print(f"| {label} | {statistics.median(walls[label]):.2f} | {above(walls, label):+.2f} "
              f"| {statistics.median(cpus[label]):.2f} | {above(cpus, label):+.2f} |")


# --------------------------------------------------------------------------- the table
def write_data(path: str | Path, rows: int, d: int = 118) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(4, d))
    x = centres[rng.integers(4, size=rows)] + rng.normal(size=(rows, d))
    np.save(path, x)


def in_subprocess(fn: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([fn, *args])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not counted")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--before", help="also our command with PYTHONPATH=this src (older code)")
    parser.add_argument("--startup", action="store_true", help="only the start-up table")
    parser.add_argument("--vade", action="store_true",
                        help="only VaDE's MNIST epoch (experiment=vade_mnist without pre-training), ours vs --before")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        fn, *rest = json.loads(args.child)
        print(json.dumps(globals()[fn](*rest)))
        return
    if args.startup:
        startup_table(max(args.rounds, 5), args.before)
        return
    if args.vade:
        vade_table(args)
        return
    dagmm_table(args)


def interleaved(runners: dict, rounds: int) -> dict[str, list[dict]]:
    """Each runner's results over ``rounds`` rounds that take them in turn: a burst of load
    on the machine hits all alike."""
    runs = {what: [] for what in runners}
    for _ in range(rounds):
        for what, run in runners.items():
            runs[what].append(run())
    return runs


def dagmm_table(args) -> None:
    overrides = ["experiment=dagmm_paper"]
    n_train = args.rows - int(args.rows * 0.5) - int(args.rows * 0.1)  # dagmm_paper: test 0.5, validation 0.1
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "kdd_sized.npy")
        write_data(path, args.rows)
        print(f"DAGMM, {args.rows} x 118 synthetic ({n_train} training rows), batch 1024, "
              f"{args.epochs} epochs per run (the first not counted), median of {args.rounds} rounds\n")
        print("| threads | what | samples/s | vs plain steps |")
        print("|---|---|---|---|")
        profiles = {}
        for t in args.threads:
            runners = {
                "plain steps": lambda: in_subprocess("plain_loop", path, t, False, n_train, 1024, args.epochs),
                "plain epoch, per-row loader": lambda: in_subprocess("plain_loop", path, t, True, n_train, 1024,
                                                                     args.epochs),
                "ours (Lightning epoch, end to end)": lambda: our_epoch(path, t, args.epochs, None, overrides, n_train),
                "ours, +model.optimizer.fused=true": lambda: our_epoch(
                    path, t, args.epochs, None, [*overrides, "+model.optimizer.fused=true"], n_train)}
            if args.before:
                runners["ours before (same command, older code)"] = lambda: our_epoch(
                    path, t, args.epochs, args.before, overrides, n_train)
            runs = interleaved(runners, args.rounds)
            reference = statistics.median(r["samples_per_s"] for r in runs["plain steps"])
            for what, rs in runs.items():
                rate = statistics.median(r["samples_per_s"] for r in rs)
                print(f"| {t} | {what} | {rate / 1000:.1f}k | {rate / reference:.2f} |", flush=True)
            profiles[t] = {what: rs[-1] for what, rs in runs.items() if what.startswith("ours")}
        print_profiles(profiles, args.epochs)


# experiment=vade_mnist's MLP: 784-500-500-2000 to a 10-d mean and log-variance, and back
VADE_WEIGHTS = 784 * 500 + 500 * 500 + 500 * 2000 + 2000 * 20 + 10 * 2000 + 2000 * 500 + 500 * 500 + 500 * 784


def gemm_peak(threads: int, dtype: str = "float32", m: int = 256, k: int = 2000, n: int = 500) -> float:
    """GFLOP/s of the network's largest product at its batch size, in ``dtype``, on ``threads``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
    best = math.inf
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - start) / 20)
    return 2 * m * k * n / best / 1e9


def vade_table(args) -> None:
    """VaDE's MNIST epoch (55k training images), our command on this code and on --before;
    its steps' rate as 6 FLOP per weight per sample (forward 2, backward 4) against the
    product peak at the batch size in the precision it trains in (float32, or bfloat16 under
    ``trainer.precision=bf16-mixed``): how far the step is from the machine's floor."""
    overrides = ["experiment=vade_mnist", "objective.pretrain_epochs=0"]
    fused = [*overrides, "+model.optimizer.fused=true"]
    variants = {"ours": (overrides, "float32"), "ours, +model.optimizer.fused=true": (fused, "float32"),
                "ours, +model.optimizer.fused=true trainer.precision=bf16-mixed": (
                    [*fused, "trainer.precision=bf16-mixed"], "bfloat16")}
    if args.before:
        variants["ours before (older code)"] = (overrides, "float32")
    print(f"VaDE on MNIST (experiment=vade_mnist, no pre-training), {args.epochs} epochs per run (the first not "
          f"counted), median of {args.rounds} rounds\n")
    print("| threads | what | samples/s | seconds per epoch | vs before | steps' GFLOP/s (of the product peak) |")
    print("|---|---|---|---|---|---|")
    profiles = {}
    for threads in args.threads:
        runners = {what: (lambda o=o, what=what: our_epoch("", threads, args.epochs, args.before if "before" in what
                                                              else None, o, 55_000))
                   for what, (o, _) in variants.items()}
        runs = interleaved(runners, args.rounds)
        before = statistics.median(r["samples_per_s"] for r in runs.get("ours before (older code)", runs["ours"]))
        peaks = {dtype: float(in_subprocess("gemm_peak", threads, dtype)) for dtype in ("float32", "bfloat16")}
        for what, rs in runs.items():
            rate = statistics.median(r["samples_per_s"] for r in rs)
            steps = statistics.median(r["profile"]["run_training_batch"] / args.epochs for r in rs)
            achieved, peak = 6 * VADE_WEIGHTS * 55_000 / steps / 1e9, peaks[variants[what][1]]
            print(f"| {threads} | {what} | {rate / 1000:.1f}k | {55_000 / rate:.2f} | {rate / before:.2f} "
                  f"| {achieved:.0f} of {peak:.0f} {variants[what][1]} ({achieved / peak:.0%}) |", flush=True)
        profiles[threads] = {f"VaDE, {what}": rs[-1] for what, rs in runs.items()}
    print_profiles(profiles, args.epochs)


def print_profiles(profiles: dict, epochs: int) -> None:
    for threads, by_code in profiles.items():
        for what, r in by_code.items():
            total = r["profile"]["run_training_epoch"]
            print(f"\nProfile of {what}, {threads} thread(s), last round: {epochs} epochs, {total:.2f} s "
                  f"(start-up, pre-training, test and saving outside them: {r['wall'] - total:.1f} s "
                  f"of {r['wall']:.1f} s)\n")
            print("| part | seconds over the epochs | share |")
            print("|---|---|---|")
            shown = 0.0
            for part, actions in PROFILED.items():
                seconds = sum(r["profile"].get(a, 0.0) for a in actions)
                shown += seconds
                print(f"| {part} | {seconds:.2f} | {seconds / total:.0%} |")
            print(f"| the rest (hooks, logging, progress) | {total - shown:.2f} | {(total - shown) / total:.0%} |")


if __name__ == "__main__":
    main()
