"""What a run prints: Lightning's advertising and warnings known to be harmless here are
dropped (our own warnings are not), and a finished run ends with its main metrics, its
directory and the commands to look further."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

# each is harmless by design in this project (why in the comment)
HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",   # Lightning's own use of torch's pytree
    r"`LightningModule.configure_optimizers` returned `None`",  # EM has no optimiser
    r".*does not have many workers",                       # in-memory tensors: workers are slower
    r"The number of training batches .* is smaller than the logging interval",
    r"The `srun` command is available on your system but is not used",  # we launch ranks ourselves
    r"It is recommended to use `self.log\(.*sync_dist=True",  # our metrics are gathered already
    r"Checkpoint directory .* exists and is not empty",      # a resumed run writes into its own
)
HARMLESS_LOG_LINES = ("💡 Tip:", "TPU available", "`weights_only` was not set")

MAIN_METRICS = ("val/loss", "best/val/loss", "val/nll", "best/val/nll", "test/nll", "test/acc", "test/nmi", "test/ari", "test/auroc",
                "test/average_precision", "test/f1", "test/bits_per_dim", "train/bic")


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HARMLESS_LOG_LINES)


_DROP = _DropHarmless()  # one instance: addFilter ignores a second add, so quiet_lightning may run twice


def quiet_lightning() -> None:
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for handler in logging.getLogger().handlers:  # Hydra's: Lightning propagates to them when imported after
        handler.addFilter(_DROP)
    for name in ("pytorch_lightning", "lightning_fabric", "pytorch_lightning.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        logger.addFilter(_DROP)
        for handler in logger.handlers:
            handler.addFilter(_DROP)


def summary(metrics: dict[str, float], run_dir: Path, sweep_dir: Path | None, stopped: str | None) -> str:
    """The last lines of a successful run."""
    shown = [(k, metrics[k]) for k in MAIN_METRICS if k in metrics]
    width = max([len(k) for k, _ in shown] + [6])
    lines = ["", f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k:<{width}}  {v:.6g}" for k, v in shown]
    if stopped:
        lines.append(stopped)
    lines += [f"run dir:     {run_dir}  (metrics.json, config.yaml, checkpoints/, tensorboard/)",
              f"tensorboard: tensorboard --logdir {sweep_dir or run_dir} --host 127.0.0.1"]
    if sweep_dir is not None:
        return "\n".join(lines[:-1])  # the sweep's end names the tensorboard and report commands
    lines.append(f"evaluate:    python -m dgmm_lab.evaluate ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    return "\n".join(lines)


class SweepSummary:
    """Hydra callback (conf/hydra/default.yaml): after a local or Slurm sweep, how many jobs
    finished and the commands to look at the whole sweep."""

    started: Path | None = None  # this process's sweep dir, for a Ctrl-C after the launcher gave up

    def on_multirun_start(self, config, **kwargs) -> None:
        SweepSummary.started = Path(config.hydra.sweep.dir).resolve()

    def on_multirun_end(self, config, **kwargs) -> None:
        """Exits 1 when a job failed or was interrupted (a job of a parallel sweep signalled
        alone): a wrapper must not count the sweep a success."""
        from .report import read_jobs, unfinished_counts

        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        if not sweep_dir.is_dir():
            return
        jobs = read_jobs(sweep_dir)
        unfinished = unfinished_counts(jobs)
        rest = "".join(f", {n} {s}" for s, n in unfinished.items())
        print(f"\nsweep: {sum(j['status'] == 'done' for j in jobs)} of {len(jobs)} jobs finished{rest}: {sweep_dir}\n"
              f"report:      python -m dgmm_lab.report {sweep_dir}\n"
              f"tensorboard: tensorboard --logdir {sweep_dir} --host 127.0.0.1")
        if unfinished.get("failed") or unfinished.get("interrupted"):
            sys.stdout.flush()
            sys.exit(1)

    def __getattr__(self, name):  # Hydra calls every other hook of its Callback interface
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
