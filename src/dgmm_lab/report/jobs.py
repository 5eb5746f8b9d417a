"""The jobs under one or more sweep directories: what each was told, what it wrote, what became of it.

A job directory is one with ``.hydra/overrides.yaml``.  Each job is a dict with ``job`` (its
path relative to its sweep, prefixed by the sweep's name when several are read), ``dir``,
``params`` (its overrides, ``{"k": "5", ...}``), ``choices`` (the config groups it composed:
model, objective, backbone, data, experiment), ``settings`` (its resolved config.yaml,
flattened: ``{"k": 5, "data.batch_size": 256, ...}``), ``sweep`` and ``sweep_dir`` (the
directory's name and resolved path),
``metrics`` (metrics.json), ``status``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# choices named in panel titles and grouping, in this order
CHOICE_GROUPS = ("experiment", "model", "objective", "backbone", "data")


def read_jobs(*sweep_dirs: Path) -> list[dict]:
    jobs = []
    unique = list(dict.fromkeys(d.resolve() for d in sweep_dirs))  # a dir given twice counts once
    for sweep_dir in unique:
        prefix = f"{sweep_dir.name}/" if len(unique) > 1 else ""
        for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
            job_dir = overrides_file.parent.parent
            if any(part.startswith(("replaced-", ".submitit")) for part in job_dir.relative_to(sweep_dir).parts):
                continue  # results a resume=false run moved aside; submitit's own files
            metrics_file = job_dir / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            relative = str(job_dir.relative_to(sweep_dir))
            jobs.append({"sweep": sweep_dir.name, "sweep_dir": sweep_dir, "job": prefix + (relative if relative != "." else sweep_dir.name), "dir": job_dir,
                         "params": job_params(job_dir, overrides_file), "choices": job_choices(job_dir),
                         "settings": job_settings(job_dir),
                         "status": job_status(job_dir, metrics), "metrics": metrics})
    return sorted(jobs, key=lambda j: (sorted((k, natural(v)) for k, v in j["params"].items()), j["job"]))


def job_params(job_dir: Path, hydra_copy: Path) -> dict[str, str]:
    # the overrides the run trained with (train.py writes them as it starts); Hydra's .hydra/
    # copy is rewritten by any later command pointed at the same dir
    own = job_dir / "overrides.yaml"
    overrides = yaml.safe_load((own if own.exists() else hydra_copy).read_text()) or []
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def job_choices(job_dir: Path) -> dict[str, str]:
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.exists():
        return {}
    choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
    chosen = {g: str(choices[g]) for g in CHOICE_GROUPS if choices.get(g) not in (None, "null")}
    if chosen.get("model") == "em_gmm":
        chosen.pop("objective", None)  # the EM model composes no objective
    return chosen


def job_settings(job_dir: Path) -> dict:
    config_file = job_dir / "config.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.exists() else {}
    return flatten(config)


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def effective_value(job: dict, key: str) -> str:
    """What the job ran with for ``key``: its override, else its config group's choice, else
    its resolved config's value (a key another sweep varied and this one left alone)."""
    if key in job["params"]:
        return job["params"][key]
    if key in job["choices"]:
        return job["choices"][key]
    value = job.get("settings", {}).get(key)
    return "" if value is None else str(value).replace(" ", "")


def natural(value: str):
    """k=5 before k=10: numbers compare as numbers, the rest as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def job_status(job_dir: Path, metrics: dict) -> str:
    from ..lifecycle import lock_owner_alive, read_status

    state = read_status(job_dir)
    error_file = job_dir / "error.txt"
    if state.get("state") == "finished" and metrics:
        return "done"
    if error_file.exists() or state.get("state") == "failed":
        text = error_file.read_text().strip() if error_file.exists() else state.get("error", "")
        return "failed: " + (text.splitlines() or ["?"])[-1][:200].replace("|", "/")
    if state.get("state") == "interrupted":
        epoch = state.get("last_checkpoint_epoch")
        return f"interrupted ({state.get('signal')}; " + ("no checkpoint)" if epoch is None else f"last.ckpt of epoch {epoch})")
    if metrics:
        return "done"
    if state.get("state") == "running" and not lock_owner_alive(job_dir):
        return "killed (its process is gone)"
    return "running" if state else "not started"


def status_word(status: str) -> str:
    """done, failed, interrupted, killed, running, not started"""
    return "not started" if status == "not started" else status.split(" ")[0].rstrip(":")


def unfinished_counts(jobs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs:
        if j["status"] != "done":
            counts[status_word(j["status"])] = counts.get(status_word(j["status"]), 0) + 1
    return counts


def planned_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweep's last launch asked for (its multirun.yaml), or None where that
    cannot be told: jobs never started have no directory to count."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.exists():
        return None
    hydra = (yaml.safe_load(multirun.read_text()) or {}).get("hydra", {})
    sweeper = hydra.get("sweeper", {})
    if "n_trials" in sweeper:
        return int(sweeper["n_trials"])
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(hydra.get("overrides", {}).get("task", []))
    overrides += [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    except Exception:  # noqa: BLE001  (a multirun.yaml this Hydra cannot read: say nothing)
        return None
    return sum(len(b) for b in batches)
