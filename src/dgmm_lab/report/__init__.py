"""``python -m dgmm_lab.report SWEEP_DIR [SWEEP_DIR ...]``: a sweep as a research result.

The jobs (``jobs.py``) are grouped over their replicate seeds, each metric as mean ± std over
the finished replicates with their count (``table.py``); figures against k and over epochs
(``plots.py``); written as report.md, report.csv (a row per group), jobs.csv (a row per
job), PNGs and a self-contained report.html (``html.py``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from .html import write_html
from .jobs import planned_jobs, read_jobs, unfinished_counts
from .plots import curve_figure, metric_figures
from .table import REPLICATES, group_jobs, group_rows, job_rows, mark_best, markdown_table, shown_columns, table_rows

__all__ = ["read_jobs", "unfinished_counts", "write_report"]


def write_report(jobs: list[dict], sweep_dirs: list[Path], out_dir: Path, replicates: tuple[str, ...] = REPLICATES,
                 columns: list[str] | None = None, raw: bool = False, chosen: tuple[str, ...] = ()) -> Path:
    """jobs: ``read_jobs(*sweep_dirs)``."""
    groups = group_jobs(jobs, replicates, raw, chosen)
    metrics = shown_columns(groups, columns)
    mark_best(groups, metrics)
    header, rows = table_rows(groups, metrics)
    finished = sum(j["status"] == "done" for j in jobs)
    never = sum(max(0, (planned_jobs(d) or 0) - sum(j["sweep_dir"] == d for j in jobs))
                for d in dict.fromkeys(p.resolve() for p in sweep_dirs))
    plural = "s" if len(groups) != 1 else ""
    notes = [
        f"{finished} of {len(jobs) + never} jobs finished" + "".join(f", {n} {s}" for s, n in unfinished_counts(jobs).items())
        + (f", {never} never started (their sweep was stopped: its multirun.yaml lists them)" if never else "")
        + ("; one row per job." if raw else f", in {len(groups)} group{plural} over the replicate keys "
           f"{', '.join(replicates) or '(none)'}."),
        ("Cells: each job's value. " if raw else "Cells: mean ± sample std over a group's finished jobs (n: how many; "
         "(n=..) where a job did not write that metric). ")
        + (f"Per method and replicate, {', '.join(chosen)} chosen by the lowest validation value of the run's "
           "selection metric (best/<optimized_metric>), without labels; the other jobs are left out. " if chosen else "")
        + "Bold: the best per metric and all within one std of it (the larger of the two), higher "
        "acc/nmi/ari/auroc/ap/f1, lower nll/bic/loss; likelihoods and losses compared only within one data "
        "set, objective and backbone, and not for degenerate fits; times (shared machines) not ranked.",
    ]
    unfinished = [f"{j['job']}: {j['status']}" for j in jobs if j["status"] != "done"]
    title = "Sweep report: " + ", ".join(d.name for d in sweep_dirs)
    lines = [f"# {title}", "", *(n + "\n" for n in notes), *markdown_table(header, rows)]
    if unfinished:
        lines += ["", "Jobs that did not finish:", "", *(f"- {u}" for u in unfinished)]
    out_dir.mkdir(parents=True, exist_ok=True)
    images = metric_figures(groups, metrics, out_dir)
    curves = curve_figure(groups, out_dir)
    images += [curves] if curves else []
    lines += ["", *(f"![{p.stem}]({p.name})" for p in images)]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    _write_csv(out_dir / "report.csv", *group_rows(groups))
    _write_csv(out_dir / "jobs.csv", *job_rows(jobs))
    write_html(out_dir / "report.html", title, notes, header, rows, unfinished, images)
    return report


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
