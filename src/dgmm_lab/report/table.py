"""Jobs grouped over their replicates, each metric as mean, std and count, the best marked.

A group is the jobs whose overrides agree except for the replicate keys (``seed``,
``data.split_seed`` and any given ones): the same method on other seeds or splits.  Its
statistics use only the finished jobs; the others are counted by what became of them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .jobs import effective_value, natural, status_word

REPLICATES = ("seed", "data.split_seed")
# settings that change how a job runs, not what it computes
NOT_A_METHOD = ("launcher", "num_threads", "trainer.enable_progress_bar", "trainer.enable_model_summary")

# the columns shown by default, in this order, where the jobs wrote them (report.columns=...
# chooses others); test/* metrics not listed here follow the listed ones
DEFAULT_COLUMNS = (
    "test/acc", "test/nmi", "test/ari",                                        # clustering
    # anomaly: F1 at the true rate (precision = recall = F1 there, so only F1 is shown) and
    # at the model's own label-free threshold (what predict flags)
    "test/auroc", "test/average_precision", "test/f1", "test/f1_dagmm",
    "test/f1_at_threshold", "test/precision_at_threshold", "test/recall_at_threshold",
    "test/nll", "test/bits_per_dim", "test/nll_per_dim",                       # density, MDN
    "best/val/loss", "best/val/nll", "best/val/bits_per_dim",                  # what checkpoints chose by
    "train/bic", "train/aic",                                                  # model selection
    "time/seconds_per_epoch", "time/total_seconds",
    "train/degenerate_components", "train/empty_components",                   # degenerate fits
    "data/constant_columns", "data/extreme_columns",
)
HIGHER_IS_BETTER = {"acc", "nmi", "ari", "auroc", "average_precision", "f1", "precision", "recall", "f1_dagmm",
                    "f1_at_threshold", "precision_at_threshold", "recall_at_threshold"}
LOWER_IS_BETTER = {"nll", "bits_per_dim", "nll_per_dim", "loss", "bic", "aic", "seconds_per_epoch", "total_seconds"}
# numbers on the scale of one objective and one feature space: compared only within it
SCALE_DEPENDENT = {"nll", "bits_per_dim", "nll_per_dim", "loss", "bic", "aic"}


@dataclass
class Cell:
    mean: float
    std: float  # sample standard deviation over the finished replicates (0 for one)
    n: int


@dataclass
class Group:
    params: dict[str, str]
    choices: dict[str, str]
    settings: dict  # k, covariance, optimized_metric of its (first) job's resolved config
    jobs: list[dict] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)
    best: set[str] = field(default_factory=set)

    @property
    def k(self) -> int | None:
        """The jobs' common number of components (None where they differ: k a replicate key)."""
        ks = {j.get("settings", {}).get("k") for j in self.jobs}
        return int(ks.pop()) if len(ks) == 1 and None not in ks else None

    @property
    def finished(self) -> list[dict]:
        return [j for j in self.jobs if j["status"] == "done"]

    def status(self) -> str:
        if len(self.jobs) == 1:
            return self.jobs[0]["status"]
        if len(self.finished) == len(self.jobs):
            return "done"
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[status_word(j["status"])] = counts.get(status_word(j["status"]), 0) + 1
        return ", ".join(f"{n} {word}" for word, n in counts.items())


def choose_by_validation(jobs: list[dict], chosen: tuple[str, ...], replicates: tuple[str, ...]) -> list[dict]:
    """Per method and replicate, of the jobs that differ only in the ``chosen`` keys (k), the
    finished one whose run selected its best checkpoint at the lowest validation value
    (``best/<optimized_metric>``): model selection without labels, as a user would do it.
    Each kept job records what was chosen (``job["chosen"]``)."""
    buckets: dict[tuple, list[dict]] = {}
    for j in jobs:
        rest = tuple(sorted((k, v) for k, v in j["params"].items() if k not in chosen))
        buckets.setdefault(rest + tuple(sorted(j["choices"].items())), []).append(j)
    chosen_label: dict[int, str] = {}  # id(job) -> "k=4", for the jobs kept
    for members in buckets.values():
        scored = [(j["metrics"].get(f"best/{j['settings'].get('optimized_metric', 'val/nll')}"), j) for j in members
                  if j["status"] == "done"]
        scored = [(v, j) for v, j in scored if _finite(v)]
        if not scored:  # nothing finished to choose from: the failures stay visible
            chosen_label.update({id(j): "" for j in members})
            continue
        best = min(scored, key=lambda vj: vj[0])[1]
        chosen_label[id(best)] = ", ".join(f"{k}={effective_value(best, k)}" for k in chosen)
    return [{**j, "chosen": chosen_label[id(j)]} for j in jobs if id(j) in chosen_label]


def group_jobs(jobs: list[dict], replicates: tuple[str, ...] = REPLICATES, raw: bool = False,
               chosen: tuple[str, ...] = ()) -> list[Group]:
    """One group per method (per job with ``raw``), in the jobs' order, with its statistics.
    A method is the jobs' values of every key any job overrode (its config's value where it
    did not), and the sweep it came from when several are merged.  ``chosen`` keys (k) are
    chosen per replicate by validation (``choose_by_validation``) instead of grouped by."""
    if chosen:
        jobs = choose_by_validation(jobs, chosen, replicates)
    keys = sorted({k for j in jobs for k in j["params"]
                   if k not in NOT_A_METHOD and k not in chosen and (raw or k not in replicates)})
    several_sweeps = len({j.get("sweep") for j in jobs}) > 1
    groups: dict[tuple, Group] = {}
    for j in jobs:
        params = {"sweep": j["sweep"]} if several_sweeps else {}
        params.update({k: effective_value(j, k) for k in keys})
        key = (j["job"],) if raw else tuple(sorted(params.items())) + tuple(sorted(j["choices"].items()))
        groups.setdefault(key, Group(params, j["choices"], j.get("settings", {}))).jobs.append(j)
    for g in groups.values():
        if chosen:  # e.g. "k=1 ×3, k=4 ×2": what validation chose on the replicates
            counts: dict[str, int] = {}
            for j in g.finished:
                counts[j.get("chosen", "")] = counts.get(j.get("chosen", ""), 0) + 1
            g.params["chosen by validation"] = ", ".join(f"{c} ×{n}" for c, n in sorted(counts.items()))
        for m in sorted({m for j in g.finished for m in j["metrics"]}):
            values = [j["metrics"][m] for j in g.finished if m in j["metrics"] and _finite(j["metrics"][m])]
            if values:
                g.cells[m] = Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                                  len(values))
    return list(groups.values())


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def shown_columns(groups: list[Group], columns: list[str] | None = None) -> list[str]:
    present = {m for g in groups for m in g.cells}
    if columns == ["all"]:
        return sorted(present, key=column_rank)
    if columns:
        return [m for m in columns if m in present]
    hidden = {"test/precision", "test/recall"}  # equal to test/f1: the threshold is at the true rate
    extra_tests = sorted(m for m in present if m.startswith("test/") and m not in DEFAULT_COLUMNS and m not in hidden)
    chosen = [m for m in DEFAULT_COLUMNS if m in present] + extra_tests
    # a count column only where some job has something to count
    return [m for m in chosen if not _is_count(m) or any(g.cells[m].mean for g in groups if m in g.cells)]


def column_rank(metric: str):
    return (DEFAULT_COLUMNS.index(metric), "") if metric in DEFAULT_COLUMNS else (len(DEFAULT_COLUMNS), metric)


def _is_count(metric: str) -> bool:
    return metric.endswith(("_components", "_columns"))


def direction(metric: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neither (counts, thresholds)."""
    name = metric.split("/")[-1]
    return 1 if name in HIGHER_IS_BETTER else -1 if name in LOWER_IS_BETTER else 0


def scale_of(group: Group, metric: str) -> tuple:
    """Groups whose values of ``metric`` mean the same thing: always the same data; for
    likelihoods and losses also the same objective (EM's is the exact NLL) and feature space."""
    # the data set: its config group and, for your own files, which file
    data = (group.choices.get("data", group.params.get("data", "")), group.params.get("data.path", ""))
    if metric.split("/")[-1] not in SCALE_DEPENDENT:
        return data
    objective = "nll" if group.choices.get("model") == "em_gmm" else group.choices.get("objective", "")
    return (*data, objective, group.choices.get("backbone", ""))


def degenerate(g: Group) -> bool:
    """A fit whose likelihood the run itself called meaningless (components with fewer points
    than their covariance needs): not ranked on likelihoods."""
    return any(j["metrics"].get("train/degenerate_components", 0) for j in g.finished)


def mark_best(groups: list[Group], metrics: list[str]) -> None:
    """Mark the best group per metric, and every group within one standard deviation of it
    (the larger of the two groups' std): a tie at the seed spread is a tie.  Wall-clock
    times are not ranked (shared machines), nor degenerate fits on likelihoods."""
    for m in metrics:
        sign = direction(m)
        if not sign or m.startswith("time/"):
            continue
        scale_dependent = m.split("/")[-1] in SCALE_DEPENDENT
        scales: dict[tuple, list[Group]] = {}
        for g in groups:
            if m in g.cells and not (scale_dependent and degenerate(g)):
                scales.setdefault(scale_of(g, m), []).append(g)
        for members in scales.values():
            if len(members) < 2:
                continue
            top = max(members, key=lambda g: sign * g.cells[m].mean).cells[m]
            for g in members:
                c = g.cells[m]
                if abs(c.mean - top.mean) <= max(c.std, top.std, 1e-9 * abs(top.mean)):
                    g.best.add(m)


def varying_keys(groups: list[Group]) -> list[str]:
    keys = sorted({k for g in groups for k in g.params}, key=lambda k: (k == "chosen by validation", k))
    varying = [k for k in keys if len({g.params.get(k) for g in groups}) > 1 or k == "chosen by validation"]
    return varying or keys


def fmt(value: float, like: float | None = None) -> str:
    scale = abs(like if like is not None else value)
    return f"{value:.1f}" if scale >= 1000 else f"{value:.2f}" if scale >= 100 else f"{value:.4f}"


def cell_text(g: Group, m: str) -> str:
    c = g.cells.get(m)
    if c is None:
        return ""
    text = fmt(c.mean) if c.n == 1 else f"{fmt(c.mean)} ± {fmt(c.std, c.mean)}"
    return text + (f" (n={c.n})" if c.n != len(g.finished) else "")


def table_rows(groups: list[Group], metrics: list[str]) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """The report's table: header, and per group its cells as (text, is best)."""
    keys = varying_keys(groups)
    rows = []
    for g in groups:
        cells = [(g.params.get(k, ""), False) for k in keys] + [(str(len(g.finished)), False), (g.status(), False)]
        rows.append(cells + [(cell_text(g, m), m in g.best) for m in metrics])
    return [*keys, "n", "status", *metrics], rows


def markdown_table(header: list[str], rows: list[list[tuple[str, bool]]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"**{t}**" if best and t else t.replace("|", "/") for t, best in row) + " |")
    return lines


def group_rows(groups: list[Group]) -> tuple[list[str], list[list]]:
    """report.csv: one row per group, each metric's mean, std and n."""
    keys = varying_keys(groups)
    metrics = sorted({m for g in groups for m in g.cells}, key=column_rank)
    choices = [c for c in _choice_keys(groups) if c not in keys]
    header = [*keys, *choices, "finished", "jobs", "status"]
    header += [f"{m}{part}" for m in metrics for part in ("", " std", " n")]
    rows = []
    for g in groups:
        row = [g.params.get(k, "") for k in keys] + [g.choices.get(c, "") for c in choices]
        row += [len(g.finished), len(g.jobs), g.status()]
        for m in metrics:
            c = g.cells.get(m)
            row += ["", "", 0] if c is None else [repr(c.mean), repr(c.std), c.n]
        rows.append(row)
    return header, rows


def job_rows(jobs: list[dict]) -> tuple[list[str], list[list]]:
    """jobs.csv: one row per job, every metric it wrote."""
    keys = sorted({k for j in jobs for k in j["params"]}, key=natural)
    metrics = sorted({m for j in jobs for m in j["metrics"]}, key=column_rank)
    rows = [[j["job"], *(j["params"].get(k, "") for k in keys), j["status"], *(j["metrics"].get(m, "") for m in metrics)]
            for j in jobs]
    return ["job", *keys, "status", *metrics], rows


def _choice_keys(groups: list[Group]) -> list[str]:
    return sorted({c for g in groups for c in g.choices})
