"""The command line of ``dgmm_lab.report`` (see USAGE)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

USAGE = """usage: python -m dgmm_lab.report SWEEP_DIR [SWEEP_DIR ...] [--raw] [report.KEY=VALUE ...]
  SWEEP_DIR  a sweep's directory (outputs/train/multiruns/<time>); several merge into one report
  --raw      one row per job instead of one per group of replicates
  report.replicates=[seed,data.split_seed]  the keys whose jobs are replicates of one method
  report.columns=[test/acc,test/nll]         the metric columns, in this order (all: every metric)
  report.choose=[k]  per method and replicate keep the job with the best validation value
                     (best/<optimized_metric>): k chosen without labels
  report.output=DIR  where to write (default: the sweep's directory; for several,
                     outputs/reports/<time>)
writes report.md, report.csv (a row per group), jobs.csv (a row per job), <metric>.png,
curves.png and report.html, and prints the table"""

SETTINGS = {"replicates": list, "columns": list, "choose": list, "output": str}


def parse(argv: list[str]) -> tuple[list[Path], dict, bool]:
    dirs, settings, raw = [], {}, False
    for arg in argv:
        if arg == "--raw":
            raw = True
        elif arg.startswith("report.") and "=" in arg:
            key, value = arg.split("=", 1)
            name = key.removeprefix("report.")
            if name not in SETTINGS:
                _fail(f"{key} is not a setting of the report; allowed: " + ", ".join(f"report.{s}" for s in SETTINGS))
            settings[name] = _value(key, value, SETTINGS[name])
        elif arg.startswith("-"):
            _fail(f"unknown option {arg!r}; {USAGE.splitlines()[0]}")
        elif Path(arg).is_dir():  # a job dir's name has '=' in it: a directory first
            dirs.append(Path(arg))
        elif "=" in arg and not Path(arg).exists():
            _fail(f"{arg.split('=', 1)[0]} is not a setting of the report; allowed: "
                  + ", ".join(f"report.{s}" for s in SETTINGS) + " (or SWEEP_DIR is not a directory)")
        else:
            _fail(f"SWEEP_DIR={arg!r} is not a directory; {USAGE.splitlines()[0]}")
    if not dirs:
        _fail(f"expected at least one SWEEP_DIR, got none; {USAGE.splitlines()[0]}")
    return dirs, settings, raw


def _value(key: str, value: str, kind: type):
    from omegaconf import OmegaConf

    if kind is str:
        if not value.strip():
            _fail(f"{key}='' is not allowed; allowed: a directory path")
        return value
    example = {"report.replicates": "[seed,data.split_seed]", "report.columns": "[test/acc,test/nll]",
               "report.choose": "[k]"}[key]
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    except Exception:  # noqa: BLE001  (OmegaConf's parser errors name grammar rules, not the key)
        parsed = None
    parsed = [parsed] if isinstance(parsed, str) and not value.startswith("[") else parsed
    if not isinstance(parsed, list) or not parsed or not all(isinstance(p, str) for p in parsed):
        _fail(f"{key}={value!r} is not allowed; allowed: a non-empty list of names, e.g. {key}={example}")
    return parsed


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    dirs, settings, raw = parse(argv)
    from . import read_jobs, write_report
    from .table import REPLICATES, shown_columns, group_jobs

    jobs = read_jobs(*dirs)
    for d in dirs:
        if not any(j["sweep_dir"] == d.resolve() for j in jobs):
            _fail(f"SWEEP_DIR={str(d)!r} holds no job directories (with .hydra/overrides.yaml); "
                  "allowed: a sweep's directory, outputs/train/multiruns/<time>")
    columns = settings.get("columns")
    if columns and columns != ["all"]:
        written = shown_columns(group_jobs(jobs), ["all"])
        missing = [c for c in columns if c not in written]
        if missing:
            _fail(f"report.columns: {', '.join(missing)} not written by any finished job; allowed: all, "
                  + ", ".join(written))
    for setting in ("replicates", "choose"):
        unknown = [r for r in settings.get(setting, []) if not any(r in j["params"] or r in j["settings"] for j in jobs)]
        if unknown:
            keys = sorted({k for j in jobs for k in j["params"]})
            _fail(f"report.{setting}: {', '.join(unknown)} is no job's setting; allowed: keys the jobs were given, "
                  + ", ".join(keys))
    default_out = dirs[0] if len(dirs) == 1 else Path("outputs") / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(settings.get("output", default_out))
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"report.output={str(out_dir)!r} is a file; allowed: a directory (new or existing)")
    report = write_report(jobs, dirs, out_dir, tuple(settings.get("replicates", REPLICATES)), columns, raw,
                          tuple(settings.get("choose", ())))
    try:
        print(report.read_text())
        print(f"written: {report}, report.html, report.csv, jobs.csv and the PNGs beside it")
    except BrokenPipeError:  # | head: the reader has what it wanted
        sys.stderr.close()


def _fail(message: str) -> None:
    print(f"dgmm_lab: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
