"""One training job: validate -> instantiate -> fit/test -> metrics.json (``train.py`` is its CLI).

Everything a run produces lives in its Hydra output directory: ``config.yaml`` (resolved),
``metrics.json``, ``checkpoints/`` (``last.ckpt`` and the best one) and TensorBoard events.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import math
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from .callbacks import EpochClock, EpochLines, SignalStops
from .config import ConfigError, check_against_data, check_config, objective_name
from .console import quiet_lightning, summary
from .lifecycle import (Interrupted, RunLock, SignalGuard, archive_previous_results, global_rank_from_env,
                        write_json_atomically, write_status)
from .resume import absolute_paths, finished_run, record_interruption, resume_checkpoint
from .models.em_gmm import EMGMM

log = logging.getLogger(__name__)


def build(cfg: DictConfig):
    """Data module (set up) and model, as the config describes them; shared with evaluate."""
    with user_errors_in_one_line():
        datamodule = instantiate_group(cfg, "data")
        datamodule.setup()
        check_against_data(cfg, datamodule)
        model = build_model(cfg, datamodule.describe_inputs())
    return datamodule, model


def build_model(cfg: DictConfig, inputs: dict):
    """The model of a config for inputs described by ``TensorDataModule.describe_inputs``
    (a checkpoint carries that description: a trained model needs no data to be rebuilt)."""
    with user_errors_in_one_line():
        backbone = instantiate_group(cfg, "backbone", input_shape=tuple(inputs["transform"]["input_shape"]))
        if objective_name(cfg) is None:
            model = instantiate_group(cfg, "model", backbone=backbone)
        else:
            # the objective's own settings now; the backbone, K and covariance type from the model
            extra = {"target_dim": inputs["target_dim"]} if "target_dim" in cfg.objective else {}
            objective = instantiate_group(cfg, "objective", **extra)
            model = instantiate_group(cfg, "model", backbone=backbone, objective=objective)
    model.inputs = inputs
    return model


def instantiate_group(cfg: DictConfig, group: str, **kwargs):
    """instantiate(cfg[group]); a key its class does not take (``+model.foo=1``) is one line."""
    try:
        made = instantiate(cfg[group], **kwargs)
    except InstantiationException as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err.__cause__ or ""))
        if not isinstance(err.__cause__, TypeError) or not match:
            raise
        target = cfg[group]._target_
        params = [name for name, p in inspect.signature(get_class(target)).parameters.items()
                  if name not in kwargs and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        close = difflib.get_close_matches(match.group(1), params, n=1)
        hint = f"did you mean {group}.{close[0]}? " if close else ""
        raise ConfigError(f"{group}.{match.group(1)} is not a setting of {target}; {hint}"
                          f"allowed: {', '.join(params)}") from None
    return made  # a partial's keys are checked by config._check_partials before this


USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


@contextmanager
def user_errors_in_one_line():
    """What constructors and data loading raise about the user's values (a value out of
    range, a missing file, column or key, a backbone that does not fit the data) is
    reported as one ``dgmm_lab: error:`` line, not a traceback in Hydra's wrapper."""
    try:
        yield
    except InstantiationException as err:
        if isinstance(err.__cause__, USER_ERRORS):
            raise _one_line(err.__cause__) from None
        raise
    except USER_ERRORS as err:
        raise _one_line(err) from None


def _one_line(err: Exception) -> ConfigError:
    if isinstance(err, ConfigError):
        return err
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return ConfigError(" ".join(str(message).split()))


def hparams_of(cfg: DictConfig) -> dict:
    """The keys a sweep varies, flat, for the TensorBoard HPARAMS tab."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    params = {"k": cfg.k, "covariance": cfg.covariance, "objective": objective_name(cfg),
              "seed": cfg.seed, "model": choices.get("model"), "backbone": choices.get("backbone"),
              "data": choices.get("data"), "lr": OmegaConf.select(cfg, "model.optimizer.lr"),
              "latent_dim": OmegaConf.select(cfg, "backbone.latent_dim")}
    for key in ("lambda_energy", "lambda_cov", "pretrain_epochs"):
        params[key] = OmegaConf.select(cfg, f"objective.{key}")
    return {k: v for k, v in params.items() if v is not None}


def log_final(trainer: pl.Trainer, params: dict, metrics: dict[str, float]) -> None:
    """Hyper-parameters with the final metrics as ``hp/...``: TensorBoard's HPARAMS tab
    then lists every job of a sweep with its swept keys and results."""
    final = {f"hp/{k}": v for k, v in metrics.items()}
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, final)
        else:
            lg.log_hyperparams(params)
            lg.log_metrics(final, step=trainer.global_step)
        lg.save()


def run(cfg: DictConfig) -> float | None:
    """One job: refuses a finished or busy run dir, trains, tests, writes metrics.json."""
    quiet_lightning()  # again: Lightning's log handlers exist only now that it is imported
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    finished = finished_run(cfg, output_dir)
    if finished is not None:
        return finished.get(cfg.optimized_metric)
    lock = RunLock(output_dir)
    is_rank_zero = global_rank_from_env() == 0
    try:
        if is_rank_zero:
            lock.acquire()
            if not cfg.get("resume", True):
                archive_previous_results(output_dir)
        absolute_paths(cfg)
        ckpt_path = resume_checkpoint(cfg, output_dir)
        if is_rank_zero:
            write_status(output_dir, "running")
        with SignalGuard() as guard:
            try:
                metrics = fit_and_test(cfg, output_dir, ckpt_path, guard)
            except Interrupted as stop:
                guard.recording = True
                # a job of a parallel local sweep goes back to its worker, which runs other jobs
                guard.exiting = not (HydraConfig.initialized()
                                     and HydraConfig.get().runtime.choices.get("hydra/launcher") == "joblib")
                if is_rank_zero:
                    record_interruption(output_dir, stop.signum)
                raise
            except Exception as err:
                if is_rank_zero:
                    what = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
                    write_status(output_dir, "failed", error=what[:500])
                raise
        return metrics.get(cfg.optimized_metric)
    finally:
        lock.release()


def fit_and_test(cfg: DictConfig, output_dir: Path, ckpt_path: str | None, guard: SignalGuard) -> dict[str, float]:
    torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    log.info(datamodule.describe_splits())
    is_em = isinstance(model, EMGMM)
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    # EM: one line per iteration instead of a progress bar over one iteration's batches; a
    # bar written to a file or pipe is only fragments of redrawn lines: a line per epoch there
    quiet = {"enable_progress_bar": False, "enable_model_summary": False} if is_em else \
        {} if sys.stderr.isatty() else {"enable_progress_bar": False}
    clock = EpochClock()
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()] + [clock, SignalStops()]
    if quiet or not cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(EpochLines())
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **quiet)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        if HydraConfig.initialized():  # what dgmm_lab.report reads as this job's swept keys
            OmegaConf.save(OmegaConf.create(list(HydraConfig.get().overrides.task)), output_dir / "overrides.yaml")
    model.run_config = OmegaConf.to_container(cfg, resolve=True)  # checkpoints are self-contained

    started = time.perf_counter()
    with lightning_stops(guard):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    stopped = em_stop_reason(model, trainer) if is_em else None  # before testing loads another checkpoint
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        # last.ckpt = the final state, also when the last epoch's save was skipped (the
        # checkpoint callback saves per validation; EM may converge in between)
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best and trainer.checkpoint_callback.best_model_score is not None:
        # Lightning's float32; the model's float64 copy (base.MixtureModule) replaces it below
        metrics[f"best/{cfg.optimized_metric}"] = float(trainer.checkpoint_callback.best_model_score)
    if cfg.get("test", True):
        # test/* of the model selected on validation data (an overfitting late epoch must not
        # decide a comparison); test_ckpt=last tests the final weights instead
        use_best = cfg.get("test_ckpt", "best") == "best" and best
        if trainer.is_global_zero:
            log.info("testing %s", best if use_best else "the final weights")
        with lightning_stops(guard):
            trainer.test(model, datamodule=datamodule, verbose=False, ckpt_path=best if use_best else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    metrics.update(getattr(model, "exact_metrics", {}))
    # this process's share of the run (a resumed run's earlier processes are not counted)
    metrics["time/total_seconds"] = time.perf_counter() - started
    if clock.epochs:
        metrics["time/seconds_per_epoch"] = clock.seconds / clock.epochs
    if hasattr(model, "final_metrics"):
        metrics.update(model.final_metrics(datamodule))
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        log.warning("non-finite final metrics: %s", ", ".join(bad))
    guard.raise_if_signalled()  # one that a handler's exception could not stop
    if trainer.is_global_zero:
        write_json_atomically(output_dir / "metrics.json", dict(sorted(metrics.items())))
        log_final(trainer, hparams_of(cfg), metrics)
        write_status(output_dir, "finished", epochs=trainer.current_epoch)
        sweep_dir = output_dir.parent if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else None
        print(summary(metrics, output_dir, sweep_dir, stopped))
    return metrics


@contextmanager
def lightning_stops(guard: SignalGuard):
    """Lightning turns SIGTERM and Ctrl-C inside fit/test into SystemExit (code 0 for
    SIGTERM, 1 for Ctrl-C): make them :class:`Interrupted` with the shell's 143/130."""
    guard.in_fit = True
    try:
        yield
    except SystemExit:
        if guard.received is not None:
            raise Interrupted(guard.received) from None
        raise
    finally:
        guard.in_fit = False
    guard.raise_if_signalled()  # a signal after the loop's last stop point


def em_stop_reason(model, trainer: pl.Trainer) -> str:
    n, tol = int(model.n_iter), model.hparams.tol
    change = model.exact_metrics.get("train/log_likelihood_change", float("nan"))
    if n >= 2 and abs(change) < tol:  # the first iteration logs a change of 0: it has none
        return f"EM converged after {n} iteration{'s' * (n != 1)} (log-likelihood change {change:.3g} < model.tol={tol:g})"
    if n >= model.hparams.max_iter:
        return f"EM stopped at model.max_iter={n} before converging (last change {change:.3g}, model.tol={tol:g})"
    last = f"last change {change:.3g}" if n >= 2 else "one iteration has no change"
    return (f"EM stopped at trainer.max_epochs={trainer.max_epochs} after {n} iteration{'s' * (n != 1)} before "
            f"converging ({last}, model.tol={tol:g}); raise trainer.max_epochs to go on")
