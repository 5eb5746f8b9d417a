"""Checks on the configuration, before anything trains.

A user mistake ends in one line naming the key, the bad value and the allowed values
(``ConfigError``); ``report_and_exit`` prints that line and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .mixture.density import COVARIANCE_TYPES

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
OBJECTIVES = ("nll", "dagmm", "vade")
# groups whose choice a user types on the command line (backbone=..., model=...)
CHECKED_GROUPS = ("model", "backbone", "data", "trainer", "logger", "callbacks", "experiment",
                  "debug", "launcher", "paths", "hparams_search")


class ConfigError(ValueError):
    pass


def report_and_exit(err: Exception) -> None:
    print(f"dgmm_lab: error: {err}", file=sys.stderr)
    sys.exit(2)


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Unknown config-group choices (``backbone=foo``), before Hydra composes anything."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key not in CHECKED_GROUPS or not (conf_dir / key).is_dir():
            continue
        allowed = group_options(key, conf_dir)
        for choice in _sweep_values(value):
            if choice not in allowed and choice != "null":
                raise ConfigError(f"{key}={choice!r} is not a known {key}; "
                                  f"allowed: {', '.join(allowed)}")


def _sweep_values(value: str) -> list[str]:
    if value.startswith(("choice(", "range(", "glob(", "interval(")):
        return []  # sweep functions: Hydra checks each value as it composes
    return [v.strip() for v in value.split(",") if v.strip()]


def check_config(cfg: DictConfig) -> None:
    """Values Hydra cannot check: covariance type, k, objective, missing required keys."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required but has no value ('???'); "
                          f"set it on the command line, e.g. {missing[0]}=...")
    _check_choice("covariance", cfg.covariance, COVARIANCE_TYPES)
    _check_choice("objective", cfg.get("objective"), OBJECTIVES)
    k = cfg.k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1 (the number of mixture components)")
    _check_objective_backbone(cfg)
    threads = cfg.get("num_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"num_threads={threads!r} must be an integer >= 1")


def _check_objective_backbone(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .objectives import COMPATIBLE_BACKBONES

    if "DeepGMM" not in str(cfg.model.get("_target_", "")) or not HydraConfig.initialized():
        return
    backbone = HydraConfig.get().runtime.choices.get("backbone")
    allowed = COMPATIBLE_BACKBONES.get(cfg.objective, ())
    if backbone not in allowed:
        raise ConfigError(f"backbone={backbone!r} does not fit objective={cfg.objective!r}; "
                          f"allowed backbones for it: {', '.join(allowed)}")


def check_against_data(cfg: DictConfig, n_train: int) -> None:
    if cfg.k > n_train:
        raise ConfigError(f"k={cfg.k} is larger than the number of training samples "
                          f"({n_train}); allowed: 1..{n_train}")


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
