"""``python -m dgmm_lab.train [group=option ...] [key=value ...] [-m]``: the command line.

Thin on purpose: the overrides are checked (choices, ranges, unknown keys) before torch and
Lightning are imported, so a mistake is one line in about a second; the job itself is
``training.run``.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import traceback
from pathlib import Path


class StoppedBeforeStart(KeyboardInterrupt):
    """SIGTERM before a run's own handler (``lifecycle.SignalGuard``) is in place: handled as
    a Ctrl-C is then, where the default action would end the process without a word."""


def _sigterm_before_start(signum, frame) -> None:
    raise StoppedBeforeStart


def not_started(err: KeyboardInterrupt) -> tuple[str, int]:
    """The line and the shell's exit code (128 + signal) of a command stopped before it trained."""
    name, code = ("SIGTERM", 143) if isinstance(err, StoppedBeforeStart) else ("SIGINT", 130)
    return f"dgmm_lab: interrupted by {name} before training started; nothing was trained", code


# the command line only: a process that imports this module (a launcher's worker, submitit's
# job with its own SIGTERM bypass) keeps its handlers
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm_before_start)
try:  # a signal while these load (about a second) is the one line below, not a traceback
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from .composition import check_composes, served_from
    from .config import CONF_DIR, ConfigError, check_config, check_override_ranges, check_overrides, report_and_exit
    from .console import quiet_lightning
    from .lifecycle import Interrupted, global_rank_from_env
except KeyboardInterrupt as stop:
    line, code = not_started(stop)
    print(line, file=sys.stderr)
    sys.exit(code)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(cfg)  # wrong for every job of a sweep: ends the sweep
        from .training import run  # torch and Lightning (check_config may load torch first): seconds
    except ConfigError as err:
        remove_if_untouched(Path(cfg.paths.output_dir))
        report_and_exit(err)
    except KeyboardInterrupt:
        remove_if_untouched(Path(cfg.paths.output_dir))  # nothing ran: no dated dir left behind
        raise

    try:
        return run(cfg)
    except Interrupted as stop:
        if HydraConfig.get().runtime.choices.get("hydra/launcher") != "joblib":
            raise
        # a job of a parallel local sweep, signalled alone: it is recorded as interrupted (its
        # status.json); the worker process and the sweep's other jobs go on
        print(f"dgmm_lab: job interrupted (exit {stop.code}): {cfg.paths.output_dir}", file=sys.stderr)
        return float("nan")
    except ConfigError as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            remove_if_untouched(Path(cfg.paths.output_dir))
            report_and_exit(err)
        # a job's own bad input (its data file, a busy run dir) fails that job, not the sweep
        print(f"dgmm_lab: error: {err}", file=sys.stderr)
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        Path(cfg.paths.output_dir, "error.txt").write_text(f"dgmm_lab: error: {err}\n")
        return float("nan")
    except Exception:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # one failed job must not end the sweep: record it, go on with the others
        trace = traceback.format_exc()
        Path(cfg.paths.output_dir, "error.txt").write_text(trace)
        log.error("job failed (recorded in error.txt):\n%s", trace)
        return float("nan")  # a failed trial to Optuna; listed as failed by dgmm_lab.report


def remove_if_untouched(output_dir: Path) -> None:
    """A run refused before it started leaves no dated dir behind: only Hydra's .hydra/, the
    log and a 'failed' status would be in it, nothing trained."""
    if not output_dir.is_dir() or global_rank_from_env() != 0:
        return
    names = {p.name for p in output_dir.iterdir()}
    status = output_dir / "status.json"
    refused = not status.exists() or '"failed"' in status.read_text()
    if names <= {".hydra", "train.log", "status.json", "run.lock"} and refused:
        shutil.rmtree(output_dir, ignore_errors=True)


def cli() -> None:
    quiet_lightning()
    # overrides appended after a trailing -m are still overrides (Hydra's argparse wants them first)
    flags = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]
    sys.argv = [sys.argv[0], *flags, *(a for a in sys.argv[1:] if a not in flags)]
    try:
        check_overrides(sys.argv[1:])
        composed = check_composes(sys.argv[1:])
        check_override_ranges(sys.argv[1:])
        with served_from(composed, sys.argv[1:]):
            main()
    except ConfigError as err:
        report_and_exit(err)
    except KeyboardInterrupt as stop:  # before a run's own handler is in place, or while a parallel launcher waits
        from .console import SweepSummary

        line, code = not_started(stop)
        if SweepSummary.started is not None:
            sweep_dir = stop_parallel_sweep(code - 128)
            line = (f"dgmm_lab: sweep interrupted ({signal.Signals(code - 128).name}); the same command with "
                    f"hydra.sweep.dir={sweep_dir} resumes it (finished jobs are skipped)")
        print(line, file=sys.stderr)
        sys.exit(code)


def stop_parallel_sweep(signum: int) -> str:
    """The launcher ended its workers, some before they could record it: a job left
    'running' by a process that is gone was interrupted with the sweep (by signal signum)."""
    from .lifecycle import lock_owner_alive, read_status
    from .resume import record_interruption

    from .console import SweepSummary

    sweep_dir = SweepSummary.started
    if sweep_dir is None:
        return "<its directory>"
    for status in sweep_dir.glob("*/status.json"):
        job_dir = status.parent
        if read_status(job_dir).get("state") == "running" and not lock_owner_alive(job_dir):
            record_interruption(job_dir, signal.Signals(signum))
    return str(sweep_dir)


if __name__ == "__main__":
    cli()
