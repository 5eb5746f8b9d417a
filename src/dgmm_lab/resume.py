"""What a run does with the run dir it is given: a finished run is left alone, an interrupted
one is resumed only by the configuration that trained it, and an interrupted one says how to
resume it."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError
from .lifecycle import check_checkpoint, checkpoint_epoch, read_status, write_status

log = logging.getLogger(__name__)

# settings a resumed run may change: how long, where and how fast it trains, what it logs
MAY_CHANGE_ON_RESUME = ("trainer", "paths", "callbacks", "logger", "resume", "ckpt_path", "test", "test_ckpt",
                        "num_threads", "data.num_workers", "data.eval_batch_size", "data.on_device",
                        "model.optimizer.fused", "model.optimizer.foreach")
# of those, the ones that change a run's digits: a change is said in the log
CHANGES_DIGITS = ("trainer.precision", "model.optimizer.fused", "model.optimizer.foreach")


def finished_run(cfg: DictConfig, output_dir: Path) -> dict | None:
    """The metrics of a finished run in output_dir, which is not trained again (one line says
    so); None when there is something to train.  Refused when it was trained with other
    settings than this command's: its results are not this command's."""
    if cfg.get("ckpt_path") is not None or not cfg.get("resume", True):
        return None
    if read_status(output_dir).get("state") != "finished":
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        absolute_paths(cfg)  # as the config was saved
        _, changed = _trained_settings(cfg, last)
        if changed:
            raise ConfigError(f"{output_dir} holds a finished run trained with {_shown(changed)}; its results are "
                              "not this command's and stay. To train these settings: resume=false (moves its "
                              "results to replaced-<time>/) or another hydra.run.dir")
    print(f"dgmm_lab: {output_dir} holds a finished run (status.json, metrics.json); nothing was retrained. "
          "To train again: resume=false (moves its results to replaced-<time>/) or another hydra.run.dir",
          file=sys.stderr)
    metrics_file = output_dir / "metrics.json"
    return json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


def absolute_paths(cfg: DictConfig) -> None:
    """File paths the user gave relative to the working directory, made absolute before the
    config is saved: a checkpoint evaluated from elsewhere must find the same file."""
    with open_dict(cfg):
        for group, key in (("data", "path"), ("model", "init_from")):
            value = cfg[group].get(key) if group in cfg else None
            if isinstance(value, str) and value and not Path(value).is_absolute():
                cfg[group][key] = str(Path(value).resolve())


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """ckpt_path=..., else the run dir's last.ckpt when resuming; checked before it is trusted,
    and refused when it was trained with other settings than this command's."""
    if cfg.get("ckpt_path") is not None:
        content = check_checkpoint(Path(cfg.ckpt_path), "ckpt_path")
        _check_epochs_left(content, cfg, f"ckpt_path={cfg.ckpt_path}", "or another checkpoint")
        return str(cfg.ckpt_path)
    last = output_dir / "checkpoints" / "last.ckpt"
    if not cfg.get("resume", True) or not last.exists():
        return None
    content, changed = _trained_settings(cfg, last)
    if changed:
        raise ConfigError(f"resume: {last} was trained with {_shown(changed)}; resume it with its own settings, "
                          "or train these with resume=false (moves the old results aside) or another hydra.run.dir")
    _check_epochs_left(content, cfg, str(last), "or resume=false to start afresh (moves the old results aside)")
    log.info("resuming from %s", last)
    saved = content.get("dgmm_lab_config")
    old, new = _flat(saved or {}), _flat(OmegaConf.to_container(cfg, resolve=True))
    for key in CHANGES_DIGITS if saved else ():
        if old.get(key) != new.get(key):
            log.warning("resuming with %s=%s; the epochs before were trained with %s=%s", key, spelled(new.get(key)),
                        key, spelled(old.get(key)))
    return str(last)


def _trained_settings(cfg: DictConfig, last: Path) -> tuple[dict, list[tuple[str, object, object]]]:
    """A run dir's last.ckpt, checked, and how its settings differ from this command's."""
    content = check_checkpoint(last, "resume", remedy="run with resume=false to start afresh, or delete it")
    return content, config_differences(content.get("dgmm_lab_config"), OmegaConf.to_container(cfg, resolve=True))


def _shown(changed: list[tuple[str, object, object]]) -> str:
    shown = ", ".join(f"{k}={spelled(old)} (now {spelled(new)})" for k, old, new in changed[:4])
    return shown + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")


def spelled(value) -> str:
    """A config value as it is typed on the command line (true, null, 'text', 3)."""
    return {True: "true", False: "false", None: "null"}[value] if value is None or isinstance(value, bool) \
        else repr(value)


def _check_epochs_left(content: dict, cfg: DictConfig, what: str, otherwise: str) -> None:
    """Lightning refuses (with a traceback) to resume a checkpoint past trainer.max_epochs."""
    # processed counts the epoch a checkpoint is saved at the end of; completed does not yet
    progress = content.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    trained = progress.get("processed", content.get("epoch"))
    max_epochs = cfg.get("trainer", {}).get("max_epochs")
    if isinstance(trained, int) and isinstance(max_epochs, int) and max_epochs != -1 and trained > max_epochs:
        raise ConfigError(f"trainer.max_epochs={max_epochs} is below the {trained} epochs {what} has trained; "
                          f"allowed: trainer.max_epochs >= {trained} to resume it, {otherwise}")


def config_differences(saved: dict | None, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for the settings that shape the model or its data."""
    if not saved:
        return []  # a checkpoint from before they carried their config
    old, new = _flat(saved), _flat(current)
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys
            if old.get(k) != new.get(k) and not k.startswith(tuple(p + "." for p in MAY_CHANGE_ON_RESUME))
            and k not in MAY_CHANGE_ON_RESUME]


def _flat(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def record_interruption(output_dir: Path, signum: int) -> None:
    last = output_dir / "checkpoints" / "last.ckpt"
    epoch = checkpoint_epoch(last)
    write_status(output_dir, "interrupted", signal=signal.Signals(signum).name,
                 last_checkpoint=str(last) if last.exists() else None, last_checkpoint_epoch=epoch)
    where = f"checkpoints/last.ckpt is of epoch {epoch}" if epoch is not None else "no checkpoint was written yet"
    print(f"dgmm_lab: interrupted by {signal.Signals(signum).name}; {where}; {resume_hint(output_dir)} "
          f"({output_dir})", file=sys.stderr)


def resume_hint(output_dir: Path) -> str:
    """The same command resumes only into the same dir: a dated default dir must be named."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return "run the same command again to resume"
    hydra_cfg = HydraConfig.get()
    given = " ".join(hydra_cfg.overrides.hydra)
    key, value = ("hydra.sweep.dir", output_dir.parent) if hydra_cfg.mode == RunMode.MULTIRUN else \
        ("hydra.run.dir", output_dir)
    if f"{key}=" in given:
        return "run the same command again to resume"
    return f"to resume, run the same command with {key}={value}"
