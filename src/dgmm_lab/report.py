"""``python -m dgmm_lab.report SWEEP_DIR``: one table and a few plots for a whole sweep.

Reads every job directory (one with ``.hydra/overrides.yaml``) under SWEEP_DIR: its swept
overrides, ``metrics.json`` and ``status.json``.  Writes ``report.md`` (best value per metric
in bold), ``report.csv`` and ``<metric>.png`` (metric against k, one line per covariance type,
one panel per model/backbone).  Jobs that did not finish are listed with what became of them:
failed (the error's last line), interrupted (the signal and the last checkpoint's epoch),
running, or killed (gone without a word, e.g. SIGKILL).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

MAIN_METRICS = ("val/nll", "test/nll", "test/acc", "test/nmi", "test/ari", "train/bic")
HIGHER_IS_BETTER = ("acc", "nmi", "ari", "auroc", "average_precision", "f1", "precision", "recall")


def read_jobs(sweep_dir: Path) -> list[dict]:
    jobs = []
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        # the overrides the run trained with (train.py writes them as it starts); Hydra's
        # .hydra/ copy is rewritten by any later command pointed at the same dir
        own = job_dir / "overrides.yaml"
        overrides = yaml.safe_load((own if own.exists() else overrides_file).read_text()) or []
        params = dict(o.split("=", 1) for o in overrides if "=" in o)
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        jobs.append({"job": str(job_dir.relative_to(sweep_dir)) or ".", "params": params,
                     "status": job_status(job_dir, metrics), "metrics": metrics})
    return sorted(jobs, key=lambda j: sorted((k, _natural(v)) for k, v in j["params"].items()))


def _natural(value: str):
    """k=5 before k=10: numbers compare as numbers, the rest as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def job_status(job_dir: Path, metrics: dict) -> str:
    from .lifecycle import lock_owner_alive, read_status

    state = read_status(job_dir)
    error_file = job_dir / "error.txt"
    if state.get("state") == "finished" and metrics:
        return "done"
    if error_file.exists() or state.get("state") == "failed":
        text = error_file.read_text().strip() if error_file.exists() else state.get("error", "")
        return "failed: " + (text.splitlines() or ["?"])[-1][:80].replace("|", "/")
    if state.get("state") == "interrupted":
        epoch = state.get("last_checkpoint_epoch")
        return f"interrupted ({state.get('signal')}; " + ("no checkpoint)" if epoch is None else f"last.ckpt of epoch {epoch})")
    if metrics:
        return "done"
    if state.get("state") == "running" and not lock_owner_alive(job_dir):
        return "killed (its process is gone)"
    return "running" if state else "not started"


def unfinished_counts(jobs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs:
        if j["status"] != "done":
            word = j["status"].split(" ")[0].rstrip(":")
            counts[word] = counts.get(word, 0) + 1
    return counts


def swept_keys(jobs: list[dict]) -> list[str]:
    keys = {k for j in jobs for k in j["params"]}
    varying = [k for k in sorted(keys) if len({j["params"].get(k) for j in jobs}) > 1]
    return varying or sorted(keys)


def best_values(jobs: list[dict], metrics: list[str]) -> dict[str, float]:
    best = {}
    for m in metrics:
        values = [j["metrics"][m] for j in jobs if m in j["metrics"]]
        if values:
            higher = m.split("/")[-1] in HIGHER_IS_BETTER
            best[m] = max(values) if higher else min(values)
    return best


def write_report(sweep_dir: Path) -> Path:
    jobs = read_jobs(sweep_dir)
    keys = swept_keys(jobs)
    present = {m for j in jobs for m in j["metrics"]}
    metrics = [m for m in MAIN_METRICS if m in present]
    best = best_values(jobs, metrics)

    lines = [f"# Sweep report: {sweep_dir.name}", "",
             f"{sum(j['status'] == 'done' for j in jobs)} of {len(jobs)} jobs finished"
             + "".join(f", {n} {s}" for s, n in unfinished_counts(jobs).items()) + ". "
             "Best value per metric in bold (lowest for nll/bic, highest for acc/nmi/ari).", "",
             "| " + " | ".join([*keys, "status", *metrics]) + " |",
             "|" + "---|" * (len(keys) + 1 + len(metrics))]
    for j in jobs:
        cells = [j["params"].get(k, "") for k in keys] + [j["status"]]
        for m in metrics:
            v = j["metrics"].get(m)
            cells.append("" if v is None else (f"**{v:.4f}**" if v == best[m] else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    report = sweep_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")

    with open(sweep_dir / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, "status", *sorted(present)])
        for j in jobs:
            writer.writerow([j["job"], *(j["params"].get(k, "") for k in keys), j["status"],
                             *(j["metrics"].get(m, "") for m in sorted(present))])
    plot_metrics(jobs, metrics, sweep_dir)
    return report


def plot_metrics(jobs: list[dict], metrics: list[str], out_dir: Path) -> None:
    from . import viz  # noqa: F401  (selects the headless backend)
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j["metrics"] and "k" in j["params"]]
    if not done:
        return
    panel_of = lambda j: f"{j['params'].get('model', '')} {j['params'].get('backbone', '')}".strip() or "all"  # noqa: E731
    panels = sorted({panel_of(j) for j in done})
    for m in metrics:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            rows = [j for j in done if panel_of(j) == panel and m in j["metrics"]]
            for cov in sorted({j["params"].get("covariance", "default") for j in rows}):
                pts = sorted((int(j["params"]["k"]), j["metrics"][m]) for j in rows
                             if j["params"].get("covariance", "default") == cov)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=cov)
            ax.set_title(panel)
            ax.set_xlabel("k")
            ax.set_ylabel(m)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"{m.replace('/', '_')}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    if len(argv) != 1:
        _fail(f"expected one SWEEP_DIR, got {len(argv)} arguments; {USAGE.splitlines()[0]}")
    if not Path(argv[0]).is_dir():
        _fail(f"SWEEP_DIR={argv[0]!r} is not a directory; {USAGE.splitlines()[0]}")
    jobs = read_jobs(Path(argv[0]))
    if not jobs:
        _fail(f"SWEEP_DIR={argv[0]!r} holds no job directories (with .hydra/overrides.yaml); "
              "allowed: a sweep's directory, outputs/train/multiruns/<time>")
    report = write_report(Path(argv[0]))
    try:
        print(report.read_text())
        print(f"written: {report}, {report.with_suffix('.csv')} and PNG plots")
    except BrokenPipeError:  # | head: the reader has what it wanted
        sys.stderr.close()


USAGE = ("usage: python -m dgmm_lab.report SWEEP_DIR\n"
         "  SWEEP_DIR  a sweep's directory (outputs/train/multiruns/<time>); writes report.md,\n"
         "             report.csv and <metric>.png there and prints the table")


def _fail(message: str) -> None:
    print(f"dgmm_lab: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
