"""``python -m dgmm_lab.train``: compose -> validate -> instantiate -> fit/test -> metrics.json.

Everything a run produces lives in its Hydra output directory: ``config.yaml`` (resolved),
``metrics.json``, ``checkpoints/`` (``last.ckpt`` and the best one) and TensorBoard events.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from .config import CONF_DIR, ConfigError, check_against_data, check_config, check_overrides, report_and_exit

log = logging.getLogger(__name__)


def build(cfg: DictConfig):
    """Data module (set up) and model, as the config describes them; shared with evaluate."""
    with user_errors_in_one_line():
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        check_against_data(cfg, datamodule)
        backbone = instantiate(cfg.backbone, input_shape=datamodule.input_shape)
        extra = {"target_dim": datamodule.target_dim} if cfg.get("objective") == "mdn" and "DeepGMM" in cfg.model._target_ else {}
        model = instantiate(cfg.model, backbone=backbone, **extra)
    return datamodule, model


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
    params = {"k": cfg.k, "covariance": cfg.covariance, "objective": cfg.get("objective"),
              "seed": cfg.seed, "model": choices.get("model"), "backbone": choices.get("backbone"),
              "data": choices.get("data")}
    for key in ("lr", "latent_dim", "lambda_energy", "lambda_cov"):
        if key in cfg.model:
            params[key] = cfg.model[key]
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
    check_config(cfg)
    torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, model = build(cfg)
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    ckpt_path = cfg.get("ckpt_path")
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and cfg.get("resume", True) and last.exists():
        log.info("resuming from %s", last)
        ckpt_path = str(last)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        # last.ckpt = the final state, also when the last epoch's save was skipped (the
        # checkpoint callback saves per validation; EM may converge in between)
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{cfg.optimized_metric}"] = float(trainer.checkpoint_callback.best_model_score)
    if cfg.get("test", True):
        # test/* of the model selected on validation data (an overfitting late epoch must not
        # decide a comparison); test_ckpt=last tests the final weights instead
        use_best = cfg.get("test_ckpt", "best") == "best" and best
        log.info("testing %s", best if use_best else "the final weights")
        trainer.test(model, datamodule=datamodule, verbose=False, ckpt_path=best if use_best else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    metrics.update(getattr(model, "exact_metrics", {}))
    if hasattr(model, "final_metrics"):
        metrics.update(model.final_metrics(datamodule))
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        log.warning("non-finite final metrics: %s", ", ".join(bad))
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
        log_final(trainer, hparams_of(cfg), metrics)
        log.info("metrics: %s", json.dumps(metrics))
        log.info("best checkpoint: %s; output: %s", best, output_dir)
    return metrics.get(cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except ConfigError as err:
        report_and_exit(err)
    except Exception:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # one failed job must not end the sweep: record it, go on with the others
        trace = traceback.format_exc()
        Path(cfg.paths.output_dir, "error.txt").write_text(trace)
        log.error("job failed (recorded in error.txt):\n%s", trace)
        return float("nan")  # a failed trial to Optuna; listed as failed by dgmm_lab.report


def cli() -> None:
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as err:
        report_and_exit(err)
    main()


if __name__ == "__main__":
    cli()
