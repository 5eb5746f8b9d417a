"""The report's figures: each metric against k (error bars: std over replicates) or, with a
single k, as bars; and the logged validation curves against the epoch (mean ± std band).

A panel holds one model/backbone/objective (its title names them); a line or bar is one
group, labelled by what distinguishes it within its panel (the covariance type, ...).
"""

from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path

import matplotlib

from .table import SCALE_DEPENDENT, Group, direction

matplotlib.use("Agg")  # headless, as viz.py; not viz itself: it loads torch, which a report needs not
import matplotlib.pyplot as plt  # noqa: E402

PANEL_CHOICES = ("experiment", "model", "backbone", "objective")


def panel_title(g: Group) -> str:
    return " · ".join(g.choices[c] for c in PANEL_CHOICES if c in g.choices) or "all jobs"


def line_label(g: Group, panel_groups: list[Group], without: tuple[str, ...] = ("k",)) -> str:
    """The group's settings that differ within its panel (k aside where it is the x axis)."""
    keys = sorted({k for p in panel_groups for k in p.params if k not in without})
    varying = [k for k in keys if len({p.params.get(k) for p in panel_groups}) > 1]
    return ", ".join(f"{k}={g.params.get(k, '-')}" for k in varying) or str(g.settings.get("covariance", "default"))


def by_panel(groups: list[Group]) -> dict[str, list[Group]]:
    panels: dict[str, list[Group]] = {}
    for g in groups:
        panels.setdefault(panel_title(g), []).append(g)
    return panels


def metric_figures(groups: list[Group], metrics: list[str], out_dir: Path) -> list[Path]:
    """One PNG per metric; against k when the groups span several k, else bars."""
    done = [g for g in groups if g.cells]
    ks = {g.k for g in done}
    written = []
    for m in metrics:
        if not direction(m):
            continue
        panels = {t: [g for g in gs if m in g.cells] for t, gs in by_panel(done).items()}
        panels = {t: gs for t, gs in panels.items() if gs}
        if not panels:
            continue
        # scale-free metrics (accuracy, AUROC, ...) share one axis: bars compare across panels
        share = m.split("/")[-1] not in SCALE_DEPENDENT and len(ks) == 1
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False, sharey=share)
        for ax, (title, members) in zip(axes[0], panels.items()):
            (_against_k if len(ks) > 1 and None not in ks else _bars)(ax, m, members)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(m)
        fig.tight_layout()
        path = out_dir / f"{m.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _against_k(ax, metric: str, members: list[Group]) -> None:
    lines: dict[str, list[Group]] = {}
    for g in members:
        lines.setdefault(line_label(g, members), []).append(g)
    ks = set()
    for label, gs in sorted(lines.items()):
        pts = sorted((g.k, g.cells[metric]) for g in gs if g.k is not None)
        ks.update(k for k, _ in pts)
        ax.errorbar([k for k, _ in pts], [c.mean for _, c in pts], yerr=[c.std for _, c in pts],
                    marker="o", capsize=3, label=label)
    ax.set_xticks(sorted(ks))  # integer k ticks only
    ax.set_xlabel("k")
    ax.legend(fontsize=8)


def _bars(ax, metric: str, members: list[Group]) -> None:
    labels = [line_label(g, members) for g in members]
    cells = [g.cells[metric] for g in members]
    ax.bar(range(len(cells)), [c.mean for c in cells], yerr=[c.std for c in cells], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(cells)), labels, rotation=20 if len(cells) > 3 else 0, ha="right" if len(cells) > 3 else "center",
                  fontsize=8)
    ks = {g.k for g in members}
    ax.set_xlabel(f"k={ks.pop()}" if len(ks) == 1 and None not in ks else "")


def curve_figure(groups: list[Group], out_dir: Path) -> Path | None:
    """Validation curves from each job's TensorBoard events, mean ± std over the replicates
    at each epoch: the selection metric, clustering accuracy where logged, the training loss.
    A group keeps its colour in every panel; one legend below them."""
    curves = {id(g): {tag: _mean_curve(g, tag) for tag in _curve_tags(g)} for g in groups if g.finished}
    tags = [t for t in dict.fromkeys(t for per in curves.values() for t, c in per.items() if c)]
    if not tags:
        return None
    fig, axes = plt.subplots(1, len(tags), figsize=(4.8 * len(tags), 3.6), squeeze=False)
    panels = by_panel(groups)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for ax, tag in zip(axes[0], tags):
        for i, g in enumerate(groups):
            curve = curves.get(id(g), {}).get(tag)
            if not curve:
                continue
            epochs, mean, std = zip(*curve)
            label = line_label(g, panels[panel_title(g)], without=())
            label = f"{panel_title(g)}: {label}" if len(panels) > 1 else label
            colour = colours[i % len(colours)]
            (handles[label],) = ax.plot(epochs, mean, "o-" if len(epochs) == 1 else "-", color=colour, label=label)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colour, alpha=0.2, linewidth=0)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(tag)
    rows = math.ceil(len(handles) / 3)
    legend_height = 0.25 * rows + 0.2  # inches, below the panels
    fig.set_figheight(3.6 + legend_height)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(3, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, legend_height / (3.6 + legend_height), 1, 1))
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curve_tags(g: Group) -> list[str]:
    selected = g.settings.get("optimized_metric") or "val/nll"
    return list(dict.fromkeys([selected, "val/acc", "train/loss"]))


def _mean_curve(g: Group, tag: str) -> list[tuple[int, float, float]]:
    per_epoch: dict[int, list[float]] = {}
    for job in g.finished:
        for epoch, value in epoch_scalars(job["dir"] / "tensorboard").get(tag, {}).items():
            per_epoch.setdefault(epoch, []).append(value)
    return [(epoch, statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else 0.0)
            for epoch, vs in sorted(per_epoch.items())]


@functools.lru_cache(maxsize=None)
def epoch_scalars(event_dir: Path) -> dict[str, dict[int, float]]:
    """Each scalar's mean over each epoch's logged values (one for validation metrics, the
    steps' for training losses), from the TensorBoard events Lightning wrote: every logging
    step also carries the ``epoch`` scalar, which maps steps to epochs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not event_dir.is_dir():
        return {}
    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    epoch_of = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    out = {}
    for tag in tags:
        sums: dict[int, list[float]] = {}
        for e in events.Scalars(tag):
            sums.setdefault(epoch_of.get(e.step, e.step), []).append(e.value)
        out[tag] = {epoch: sum(vs) / len(vs) for epoch, vs in sums.items()}
    return out
