"""Hydra's own composition errors as one ``dgmm_lab: error:`` line, before anything runs.

Hydra reports a mistyped key (``model.lambda_enrgy=0.2``) or a malformed override in five
lines and exit status 1.  ``check_composes`` composes the config once with the command's
overrides (a sweep by its first point) and turns those errors into one line that names the
key, its close matches and the keys allowed where it was meant to go.  ``served_from`` then
hands that composition to Hydra's main, which would compose the same config twice more.
"""

from __future__ import annotations

import difflib
import itertools
import re
from contextlib import contextmanager

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, ConfigError, check_precision

FLAGS = ("-m", "--multirun")
CONFIG_NAME = "train"  # conf/train.yaml, and the job name of dgmm_lab/train.py's runs
_ABSENT = object()
PARTIALS = ("model.optimizer", "model.scheduler")
# the deep model's flat keys before the objective and optimiser became config groups
MOVED = {"model.lr": "model.optimizer.lr", "lr": "model.optimizer.lr",
         "model.weight_decay": "model.optimizer.weight_decay",
         "model.lr_schedule": "model.scheduler (model.scheduler=null: a constant rate)",
         "model.estimation_dropout": "objective.dropout (objective=dagmm)",
         **{f"model.{key}": f"objective.{key} (objective=dagmm)" for key in ("lambda_energy", "lambda_cov")},
         **{f"model.{key}": f"objective.{key} (objective=vade)" for key in (
             "likelihood", "decoder_std", "pretrain_epochs", "pretrain_lr", "pretrain_reconstruction",
             "pretrain_rotation", "pretrain_shift", "pretrain_cache_dir")},
         "model.target_dim": "objective.target_dim (objective=mdn)",
         "model.min_scale": "objective.min_scale (objective=nll, vade or mdn)"}


def check_composes(argv: list[str]) -> DictConfig | None:
    """The config composed with the command's overrides (a sweep's first point), with Hydra's
    own keys; None where nothing was composed (no overrides, or Hydra's own flags)."""
    if any(a.startswith("-") and a not in FLAGS for a in argv):
        return None  # --help, --cfg, ...: Hydra's own business
    overrides = [a for a in argv if a not in FLAGS]
    points = [first_point(a) for a in overrides]
    if not any(a in FLAGS for a in argv):
        swept = next((a for a, p in zip(overrides, points) if p != a and not a.lstrip("+~").startswith("hydra")), None)
        if swept is not None:
            key, value = swept.split("=", 1)
            listed = "" if value.endswith(")") else f", {key}=[{value}] (a list) or {key}='{value}' (a string)"
            raise ConfigError(f"{swept} sweeps over values, which runs only with -m; allowed: {swept} -m "
                              f"(a job each){listed}")
    multirun = any(a in FLAGS for a in argv)
    # a single run is composed whole, Hydra's own keys included, as Hydra's run composes it, so
    # that this composition can be the run's (served_from); a sweep by its first point
    try:
        cfg = compose([p for p in points if p is not None] if multirun else overrides, with_hydra=True)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (Hydra's and OmegaConf's errors have no common base)
        raise ConfigError(explain(err, overrides, points)) from None
    if not multirun and cfg.hydra.mode is None:
        # where no config chooses the mode (hparams_search does), Hydra's main appends
        # hydra.mode=RUN to the overrides (hydra/_internal/utils.py, _run_app): as composed with it
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    check_search_params(cfg)
    check_precision(cfg)
    if multirun:
        check_sweep_base(overrides, points)
        check_precision_points(overrides, points)
    return cfg


@contextmanager
def served_from(cfg: DictConfig | None, argv: list[str]):
    """Hydra's main composes the config once only to read ``hydra.mode`` (``Hydra.get_mode``)
    and once more to run it, about 0.15-0.25 s each (issue 21).  With ``cfg``, the composition
    ``check_composes`` made of ``argv``, the first is answered from it, and a single run's
    composition is it: the same config, overrides and job name, composed as Hydra's run composes
    them (tests/test_composition.py compares the two).  A sweep's first point has the mode of the
    sweep (no shipped config chooses it per point); its jobs compose their own.  Restored after,
    for a process that runs several commands (the tests)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra

    if cfg is None or not hasattr(Hydra, "get_mode") or not hasattr(ConfigLoaderImpl, "load_configuration"):
        yield
        return
    expected = [a for a in argv if a not in FLAGS]
    unused = [] if any(a in FLAGS for a in argv) else [cfg]
    mode, own_mode, own_load = cfg.hydra.mode, Hydra.get_mode, ConfigLoaderImpl.load_configuration

    def load_configuration(self, config_name, overrides, run_mode, **kwargs):
        if unused and (config_name, list(overrides), run_mode) == (CONFIG_NAME, expected, RunMode.RUN):
            return unused.pop()  # once: a later composition (a second command) is its own
        return own_load(self, config_name, overrides, run_mode, **kwargs)

    Hydra.get_mode = lambda self, config_name, overrides: mode
    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield
    finally:
        Hydra.get_mode, ConfigLoaderImpl.load_configuration = own_mode, own_load


# the choices that decide whether trainer.precision=bf16-mixed is allowed (config.check_precision)
PRECISION_DEPENDS_ON = ("model", "objective", "experiment", "trainer.precision")
MAX_CHECKED_COMBINATIONS = 32


def check_precision_points(overrides: list[str], points: list[str | None]) -> None:
    """bf16-mixed is offered with objective=vade only.  A sweep that mixes it with another
    model, objective or preset would stop at the first such job, after the jobs before it
    trained: each combination of those swept choices is composed and checked first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # no preset asks for bf16, so only a command that does can have a point that refuses it
    if not any("bf16" in a for a in overrides if a.lstrip("+~").startswith("trainer.precision=")):
        return
    swept = {}
    for i, arg in enumerate(overrides):
        if points[i] is None or points[i] == arg:
            continue  # not a discrete sweep
        override = OverridesParser.create().parse_overrides([arg])[0]
        if override.get_key_element().lstrip("+~") in PRECISION_DEPENDS_ON:
            swept[i] = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
    combinations = list(itertools.product(*swept.values()))
    if not swept or len(combinations) > MAX_CHECKED_COMBINATIONS:
        return
    for combination in combinations[1:]:  # the first point was checked with the config itself
        chosen = dict(zip(swept, combination))
        cfg = compose([chosen.get(i, p) for i, p in enumerate(points) if p is not None])
        check_precision(cfg)


def check_sweep_base(overrides: list[str], points: list[str | None]) -> None:
    """Hydra composes a sweep's own config from its fixed overrides alone, before any swept
    choice: ``experiment=a,b data.limit_train=2000`` fails there (the default data has no
    limit_train) though every job would compose."""
    swept = [a for a, p in zip(overrides, points) if p != a and not a.lstrip("+~").startswith("hydra")]
    if not swept:
        return
    fixed = [a for a, p in zip(overrides, points) if p == a]
    try:
        compose(fixed)
    except Exception as err:  # noqa: BLE001
        match = re.search(r"Could not override '([^']+)'\. To append", " ".join(str(err).split()))
        if not match:
            return  # Hydra will say it; nothing specific to add
        key = match.group(1)
        value = next(a.split("=", 1)[1] for a in fixed if a.startswith(f"{key}="))
        raise ConfigError(f"{key}={value} is a key of the swept choices ({', '.join(swept)}) but not of the "
                          f"default config, and Hydra composes the sweep itself before those choices; write "
                          f"++{key}={value} to set it in every job") from None


def check_search_params(cfg: DictConfig) -> None:
    """A search (hparams_search=...) draws only settings the run has: ``hparams_search=dagmm
    objective=nll`` would search loss weights that nll does not have (and each trial fail)."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    choice = cfg.hydra.runtime.choices.get("hparams_search")
    for key in params:
        if key != "hydra" and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"hparams_search={choice} searches {key}, which this run's config does not have; "
                              f"allowed: the search's own model and objective (conf/hparams_search/{choice}.yaml)")


def first_point(arg: str) -> str | None:
    """The override as one job of the sweep sees it (its first value); None for hydra.*
    keys and interval() draws, which only the sweeper understands."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if arg.lstrip("+~").startswith("hydra"):
        return None
    try:
        override = OverridesParser.create().parse_overrides([arg])[0]
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{arg!r} is not an override ({first}); allowed: key=value, +new_key=value, "
                          "~key, or a sweep key=a,b with -m") from None
    if not override.is_sweep_override():
        return arg
    if not override.is_discrete_sweep():
        return None
    return f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        # the job name Hydra's main gives a run of dgmm_lab/train.py (hydra.job.name)
        with initialize_config_dir(config_dir=str(CONF_DIR), job_name=CONFIG_NAME, version_base="1.3"):
            return hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=with_hydra)
    finally:
        GlobalHydra.instance().clear()


def explain(err: Exception, overrides: list[str], points: list[str | None]) -> str:
    text = " ".join(str(err).split())
    match = re.search(r"Could not override '([^']+)'\. No match in the defaults list", text)
    if match and match.group(1) == "objective":
        return ("objective is a setting of model=deep_gmm only (the EM-GMM has no objective); "
                "allowed: model=deep_gmm objective=...")
    match = re.search(r"Could not override '([^']+)'\. To append", text)
    if match:
        key = match.group(1)
        return unknown_key(key, [p for p, a in zip(points, overrides) if p is not None and not a.startswith(f"{key}=")])
    if text.startswith("Error merging override ") and err.__cause__ is not None:
        # Hydra's own typed keys (hydra.job.chdir=maybe): the reason is in the cause
        return f"{text.removeprefix('Error merging override ')}: {str(err.__cause__).splitlines()[0]}"
    return text.split(" Set the environment variable HYDRA_FULL_ERROR")[0].split(" Config search path:")[0]


def unknown_key(key: str, other_overrides: list[str]) -> str:
    if key in MOVED:
        return f"{key} is not a key of the config; it is now {MOVED[key]}"
    if key.startswith("objective.") and _without_objective(other_overrides):
        return (f"{key} belongs to model=deep_gmm (the EM-GMM has no objective); "
                "allowed: model=deep_gmm objective=nll|dagmm|vade|mdn")
    parent, _, name = key.rpartition(".")
    try:
        cfg = compose(other_overrides, with_hydra=True)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        chosen = OmegaConf.select(cfg, f"hydra.runtime.choices.{parent}") if parent else None
    except Exception:  # noqa: BLE001
        node = chosen = None
    if not isinstance(node, DictConfig):
        return f"{key} is not a key of the config; to add a new key use +{key}=..."
    allowed = sorted(str(k) for k in node.keys() if not str(k).startswith("_")) or ["(none)"]  # not _target_
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"under {parent}" if parent else "at the top level"
    # the optimiser and schedule take more arguments than their config lists (momentum, ...)
    adding = f"; to pass another argument to {node._target_} use +{key}=..." if parent in PARTIALS else ""
    owners = options_with_key(parent, name)
    if owners and chosen:
        return (f"{key} is not a key of {parent}={chosen}; it is a setting of "
                f"{' and '.join(f'{parent}={o}' for o in owners)}; allowed {where}: {', '.join(allowed)}")
    return f"{key} is not a key of the config; {hint}allowed {where}: {', '.join(allowed)}{adding}"


def options_with_key(group: str, name: str) -> list[str]:
    """The options of config group ``group`` (conf/<group>/*.yaml) that have the key ``name``."""
    folder = CONF_DIR / group
    if not group or "." in group or not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.yaml") if name in OmegaConf.load(path))


def _without_objective(overrides: list[str]) -> bool:
    try:
        return compose(overrides).get("objective") is None
    except Exception:  # noqa: BLE001
        return False
