"""Checks on the configuration, before anything trains.

A user mistake ends in one line naming the key, the bad value and the allowed values
(``ConfigError``); ``report_and_exit`` prints that line and exits with status 2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .mixture.choices import INIT_METHODS, INIT_SELECTIONS
from .mixture.covariance_types import COVARIANCE_TYPES

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# groups whose choice a user types on the command line (backbone=..., model=...)
CHECKED_GROUPS = ("model", "objective", "backbone", "data", "trainer", "logger", "callbacks", "experiment",
                  "debug", "launcher", "paths", "hparams_search")


class ConfigError(ValueError):
    pass


def _gpus_per_node(accelerator: str, devices) -> int:
    return int(devices) if str(accelerator) in ("gpu", "cuda") and str(devices).isdigit() else 0


def _ensure_dir(path: str) -> str:
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


# the Slurm launcher asks for as many GPUs per node as the trainer uses
OmegaConf.register_new_resolver("gpus_per_node", _gpus_per_node, replace=True)
# paths.root_dir: the user's working directory. Hydra's ${hydra:runtime.cwd} is not set yet
# when a sweeper resolves hydra.sweep.dir (every local -m sweep crashed on it), this is
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
# a job's directory is one level under the sweep's, whatever its values hold
OmegaConf.register_new_resolver("job_dir_name", lambda name: str(name).replace("/", "%2F"), replace=True)
# the Optuna sweeper opens its sqlite file before Hydra has made the sweep directory
OmegaConf.register_new_resolver("ensure_dir", _ensure_dir, replace=True)


def selection_metric(*, _root_: DictConfig) -> str:
    """optimized_metric's default: what means "a better model" for the run's objective (its
    protocol's ``selection_metric``); the EM-GMM's is its likelihood."""
    objective = _root_.get("objective")
    return objective_class(_root_).selection_metric if isinstance(objective, DictConfig) and "_target_" in objective \
        else "val/nll"


OmegaConf.register_new_resolver("selection_metric", selection_metric, replace=True)


def report_and_exit(err: Exception) -> None:
    print(f"dgmm_lab: error: {err}", file=sys.stderr)
    sys.exit(2)


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The choices of a config group (files starting with _ are parts the choices share)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml") if not p.name.startswith("_"))


def objective_name(cfg: DictConfig) -> str | None:
    """The deep GMM's objective (nll, dagmm, vade, mdn); None for the EM-GMM.  This is how the
    models are told apart: model=deep_gmm composes the objective group, model=em_gmm does not."""
    node = cfg.get("objective")
    if node is None:
        return None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"objective={node!r} is a config of dgmm_lab before objectives became a config "
                          "group (conf/objective/); retrain it with this version")
    if "_target_" not in node:
        raise ConfigError(f"objective.{next(iter(node), '')} belongs to model=deep_gmm (the EM-GMM has no objective); "
                          "allowed: model=deep_gmm objective=nll|dagmm|vade|mdn")
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("objective"):
        return HydraConfig.get().runtime.choices["objective"]
    return str(node._target_).rsplit(".", 2)[-2]  # dgmm_lab.objectives.<name>.<Class>


def objective_class(cfg: DictConfig):
    """The objective's class (its declared protocol), without building anything; imports torch."""
    from hydra.utils import get_class

    return get_class(cfg.objective._target_)


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Unknown config-group choices (``backbone=foo``), k and covariance, before Hydra composes
    anything."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key in ("k", "covariance"):
            for choice in _sweep_values(value):  # every sweep point, before any job runs
                _check_value(key, int(choice) if key == "k" and _is_int(choice) else choice)
            continue
        if key not in CHECKED_GROUPS or not (conf_dir / key).is_dir():
            continue
        allowed = group_options(key, conf_dir)
        for choice in _sweep_values(value):
            if choice not in allowed and choice != "null":
                raise ConfigError(f"{key}={choice!r} is not a known {key}; "
                                  f"allowed: {', '.join(allowed)}")


def check_override_ranges(argv: list[str], ranges: dict[str, "Range"] | None = None) -> None:
    """Every sweep point of a number ``VALUE_RANGES`` knows, before any job runs: a bad
    second point (``data.batch_size=256,0 -m``) would otherwise end the sweep after the
    first job trained.  Called after check_composes, so a key the chosen config lacks
    (``data.val_size`` with data=synthetic) is named as that, not as a range of another
    group's key.  check_config checks the composed values again."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ranges = VALUE_RANGES if ranges is None else ranges
    parser = OverridesParser.create()
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+")
        if "=" not in arg or key not in ranges:
            continue
        try:
            override = parser.parse_overrides([arg])[0]
        except Exception:  # malformed: Hydra says so itself
            continue
        if override.is_sweep_override() and not override.is_discrete_sweep():
            continue  # interval(...): the sweeper draws the values
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if not (isinstance(value, str) and "${" in value):  # interpolations resolve later
                _check_range(key, value, ranges[key])


def _sweep_values(value: str) -> list[str]:
    if value.startswith(("choice(", "range(", "glob(", "interval(")):
        return []  # sweep functions: Hydra checks each value as it composes
    return [v.strip() for v in value.split(",") if v.strip()]


def check_config(cfg: DictConfig) -> None:
    """Values Hydra cannot check: covariance type, k, the objective's backbone, missing keys."""
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]} is required but has no value ('???'); "
                          f"set it on the command line, e.g. {missing[0]}=...")
    for key in ("covariance", "k"):
        _check_value(key, cfg.get(key))
    _check_backbone(cfg)
    _check_partials(cfg)
    _check_launcher(cfg)
    _check_choices(cfg)
    check_ranges(cfg)
    _check_fractions(cfg)
    _check_epochs(cfg)
    _check_monitor_and_device(cfg)


ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


def _check_choices(cfg: DictConfig) -> None:
    """Words the model or Lightning would refuse only once the run directory exists."""
    choices = {"test_ckpt": ("best", "last"), "model.init_params": INIT_METHODS, "model.init_selection": INIT_SELECTIONS,
               "objective.init_selection": INIT_SELECTIONS, "trainer.accelerator": ACCELERATORS}
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")


# what checkpoints and sweeps can minimise: metrics logged every epoch; val/loss only where
# the objective logs it (its selection_metric: DAGMM)
MONITORED = ("val/nll", "val/bits_per_dim", "train/loss", "val/loss")


def _check_monitor_and_device(cfg: DictConfig) -> None:
    metric = cfg.get("optimized_metric")
    own = selection_metric(_root_=cfg)
    allowed = [m for m in MONITORED if m != "val/loss" or own == "val/loss"]
    if metric is not None and metric not in allowed:
        raise ConfigError(f"optimized_metric={metric!r} is not allowed; allowed: {', '.join(allowed)} "
                          f"(minimised; val/bits_per_dim for image densities; default: {own})")
    check_precision(cfg)
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator!r} but this machine has no CUDA device; "
                              "allowed here: cpu (trainer=cpu)")


PRECISIONS = ("32-true", "bf16-mixed")
# refused, not mapped: the pre-training and the evaluation read the one spelling
LIGHTNING_SPELLINGS = {"32": "32-true", "bf16": "bf16-mixed"}


def check_precision(cfg: DictConfig) -> None:
    """bfloat16 autocast is offered where it was measured to keep the result: VaDE's networks
    (its ELBO's prior in float32).  EM's statistics and DAGMM's error features (a cosine
    within 1e-6 of 1) would lose their digits; a flow's log-determinant too."""
    precision = cfg.get("trainer", {}).get("precision", "32-true")
    if str(precision) not in PRECISIONS:
        spelled = LIGHTNING_SPELLINGS.get(str(precision))
        hint = f" ({precision} is Lightning's older spelling of {spelled}: write {spelled})" if spelled else ""
        raise ConfigError(f"trainer.precision={precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}{hint}")
    objective = objective_name(cfg)
    if precision == "bf16-mixed" and objective != "vade":
        what = f"objective={objective}" if objective else "model=em_gmm"
        raise ConfigError(f"trainer.precision=bf16-mixed is not allowed with {what}; allowed: 32-true "
                          "(bf16-mixed is offered with objective=vade)")


@dataclass(frozen=True)
class Range:
    """What a number in the config may be: an integer (``kind=int``) or any number, within
    ``low``/``high`` (``open_low``/``open_high`` exclude the bound itself), or null, or
    (``listable``) a non-empty list of such numbers (layer widths)."""

    kind: type = int
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    listable: bool = False
    words: tuple[str, ...] = ()  # strings allowed besides numbers ("auto")

    def allows(self, value) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, str) and value in self.words:
            return True
        if self.kind is bool:
            return isinstance(value, bool)
        if self.listable and isinstance(value, (list, ListConfig)):
            return len(value) > 0 and all(v is not None and self.allows(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false" + (", or null" if self.nullable else "") + "".join(f", or {w}" for w in self.words)
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            if self.kind is int:
                bounds = f" in {self.low}..{self.high}"
            else:
                bounds = f" in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        elif self.low is not None:
            bounds = f" {'>' if self.open_low else '>='} {self.low}"
        else:
            bounds = ""
        return (what + bounds + (", or null" if self.nullable else "") + (", or a list of them" if self.listable else "")
                + "".join(f", or {w}" for w in self.words))


SEED = Range(int, 0, 2**32 - 1)  # what numpy (and so seed_everything) accepts
FRACTION = Range(float, 0, 1, open_high=True)
# image augmentation: degrees, and a fraction of the image size
ROTATION, SHIFT = Range(float, 0, 180), Range(float, 0, 0.5, open_high=True)
# keys checked where the chosen config has them (data.val_size only in data=mnist, ...)
VALUE_RANGES = {
    "seed": SEED, "num_threads": Range(int, 1),
    "data.batch_size": Range(int, 1), "data.eval_batch_size": Range(int, 1, nullable=True),
    "data.num_workers": Range(int, 0), "data.split_seed": Range(int), "data.on_device": Range(bool, words=("auto",)),
    "data.memory_map": Range(bool, words=("auto",)),
    "data.val_fraction": FRACTION, "data.test_fraction": FRACTION,
    "data.contamination": Range(float, 0, 1, open_low=True, open_high=True, nullable=True),
    "data.n_samples": Range(int, 1), "data.dim": Range(int, 1), "data.n_clusters": Range(int, 1),
    "data.separation": Range(float, 0), "data.noise": Range(float, 0), "data.seed": SEED,
    "data.val_size": Range(int, 0, 59999),  # MNIST: taken from the 60000 training images
    "data.limit_train": Range(int, 1, nullable=True), "data.limit_test": Range(int, 1, nullable=True),
    "data.code_dim": Range(int, 1),
    # -1: no limit (Lightning's meaning); _check_epochs refuses it where nothing else stops
    "trainer.max_epochs": Range(int, -1, nullable=True), "trainer.max_steps": Range(int, -1),
    "trainer.check_val_every_n_epoch": Range(int, 1, nullable=True),
    "trainer.log_every_n_steps": Range(int, 1),
    "trainer.devices": Range(int, 1, listable=True, words=("auto",)), "trainer.num_nodes": Range(int, 1),
    "trainer.gradient_clip_val": Range(float, 0, nullable=True), "trainer.deterministic": Range(bool, words=("warn",)),
    "trainer.num_sanity_val_steps": Range(int, -1),
    "model.tol": Range(float, 0), "model.reg_covar": Range(float, 0, words=("auto",)), "model.max_iter": Range(int, 1),
    "model.n_init": Range(int, 1), "model.init_max_samples": Range(int, 1), "model.init_em_steps": Range(int, 0),
    "model.optimizer.lr": Range(float, 0, open_low=True), "model.optimizer.weight_decay": Range(float, 0),
    "model.optimizer.fused": Range(bool, nullable=True), "model.optimizer.foreach": Range(bool, nullable=True),
    "model.scheduler.T_max": Range(int, 1, nullable=True),
    "objective.n_init": Range(int, 1), "objective.min_scale": Range(float, 0, open_low=True),
    "objective.lambda_energy": Range(float, 0), "objective.lambda_cov": Range(float, 0),
    "objective.estimation_hidden": Range(int, 1, listable=True), "objective.dropout": Range(float, 0, 1, open_high=True),
    "objective.decoder_std": Range(float, 0, open_low=True), "objective.target_dim": Range(int, 1, nullable=True),
    "objective.pretrain_epochs": Range(int, 0), "objective.pretrain_restarts": Range(int, 1),
    "objective.pretrain_lr": Range(float, 0, open_low=True),
    "objective.pretrain_rotation": ROTATION, "objective.pretrain_shift": SHIFT,
    "objective.rotation": ROTATION, "objective.shift": SHIFT,
}
_ABSENT = object()


def check_ranges(cfg: DictConfig, ranges: dict[str, Range] = VALUE_RANGES) -> None:
    """Every number of ``ranges`` that the config has, against its range."""
    for key, allowed in ranges.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            _check_range(key, value, allowed)


def _check_range(key: str, value, allowed: Range) -> None:
    if not allowed.allows(value):
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed.describe()}")


def _check_fractions(cfg: DictConfig) -> None:
    val, test = (OmegaConf.select(cfg, f"data.{key}_fraction", default=0) for key in ("val", "test"))
    if val + test >= 1:
        raise ConfigError(f"data.val_fraction={val} with data.test_fraction={test} leaves no training "
                          "samples; allowed: val_fraction + test_fraction < 1")


def _check_epochs(cfg: DictConfig) -> None:
    """-1 epochs is Lightning's 'no limit': EM still stops (model.tol, model.max_iter), a deep
    model would train until killed (and its cosine schedule needs a finite length)."""
    if objective_name(cfg) is not None and cfg.trainer.get("max_epochs") == -1:
        raise ConfigError("trainer.max_epochs=-1 would train model=deep_gmm forever (only EM stops by "
                          "itself); allowed: an integer >= 0")

def _check_backbone(cfg: DictConfig) -> None:
    """The objective (deep GMM) or the model (EM-GMM) declares the backbones it fits."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_class

    if not HydraConfig.initialized():
        return
    backbone = HydraConfig.get().runtime.choices.get("backbone")
    name = objective_name(cfg)
    if name is None:
        what, allowed = "model=em_gmm", get_class(cfg.model._target_).backbones
    else:
        what, allowed = f"objective={name!r}", objective_class(cfg).backbones
    if backbone not in allowed:
        raise ConfigError(f"backbone={backbone!r} does not fit {what}; allowed backbones for it: {', '.join(allowed)}")


def _check_partials(cfg: DictConfig) -> None:
    """The optimiser, schedule and objective are built only when training starts: their
    target and keys are checked now, so a typo is one line before anything runs."""
    import importlib
    import inspect

    for path in ("model.optimizer", "model.scheduler", "objective"):
        node = OmegaConf.select(cfg, path)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        module, _, name = str(node._target_).rpartition(".")
        try:
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except Exception:  # noqa: BLE001 (ImportError, AttributeError, ...: the same to the user)
            raise ConfigError(f"{path}._target_={node._target_!r} cannot be imported; allowed: a class path "
                              f"such as torch.optim.SGD") from None
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        built_in = {"params", "optimizer", "backbone", "n_components", "covariance_type"}  # passed at build time
        for key in node:
            if not str(key).startswith("_") and key not in params:
                allowed = [n for n in params if n not in built_in and n != "self"]
                # the key may come from a preset (experiment=vade_mnist sets fused): say how to drop it
                raise ConfigError(f"{path}.{key} is not a setting of {node._target_}; allowed: {', '.join(allowed)} "
                                  f"(~{path}.{key} drops it)")
    optimizer = OmegaConf.select(cfg, "model.optimizer") or {}
    if optimizer.get("fused") and optimizer.get("foreach"):
        raise ConfigError("model.optimizer.fused=true with model.optimizer.foreach=true is not allowed; allowed: "
                          "one of them (fused is the faster on a CPU)")


def _check_launcher(cfg: DictConfig) -> None:
    """Lightning's popen DDP re-launches the whole command line, -m and sweep included, so
    in a local sweep rank 1 would run every job by itself: refuse it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = HydraConfig.get().runtime.choices.get("launcher", "local")
    strategy = cfg.trainer.get("strategy")
    popen = isinstance(strategy, DictConfig) and strategy.get("start_method") == "popen" or strategy == "ddp"
    if launcher in ("local", "submitit_local") and popen and str(cfg.trainer.get("devices")) not in ("1", "auto"):
        raise ConfigError(f"trainer=ddp (popen) cannot run inside a local -m sweep with launcher={launcher}; "
                          "use trainer=ddp_spawn there, or launcher=slurm")


def missing_keys(node, prefix: str = "") -> list[str]:
    """Keys whose value is '???' (not resolving interpolations, unlike OmegaConf's)."""
    found = []
    for key in node:
        if key == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_interpolation():
                found += missing_keys(child, f"{prefix}{key}.")
    return sorted(found)


def check_against_data(cfg: DictConfig, datamodule) -> None:
    n_train = datamodule.n_train
    name = objective_name(cfg)
    if name is not None and objective_class(cfg).conditional:
        if not getattr(datamodule, "has_targets", False):
            raise ConfigError(f"objective={name} needs data with targets y; data={type(datamodule).__name__} has "
                              "none; allowed: data=regression, or data=array with data.targets=[...]")
        wanted, got = cfg.objective.get("target_dim"), datamodule.target_dim
        if wanted is not None and wanted != got:
            raise ConfigError(f"objective.target_dim={wanted} does not match the data's {got} target "
                              f"dimension(s); allowed: {got} or null")
    if name and cfg.objective.get("likelihood") == "bernoulli":
        from .data.mapped import row_batches

        blocks = [(float(b.min()), float(b.max())) for b in row_batches(datamodule.tensors("train")[0], 2**16)]
        low, high = min(lo for lo, _ in blocks), max(hi for _, hi in blocks)
        if low < 0 or high > 1:
            raise ConfigError(f"objective.likelihood=bernoulli models values in [0, 1], and data={type(datamodule).__name__} "
                              f"has values in [{low:.3g}, {high:.3g}] (its loss would have no lower bound); "
                              "allowed: objective.likelihood=gaussian, or data scaled to [0, 1]")
    augment = [key for key in ("pretrain_rotation", "pretrain_shift", "rotation", "shift") if name and cfg.objective.get(key)]
    if augment and getattr(datamodule, "image_shape", None) is None:
        raise ConfigError(f"objective.{augment[0]}={cfg.objective[augment[0]]} rotates or shifts images, and "
                          f"data={type(datamodule).__name__} has none; allowed: 0 for data without images")
    if OmegaConf.select(cfg, "backbone.dequantize") and getattr(datamodule, "scaling", None) == "standardize":
        # the flow's dequantisation adds noise within grey levels 1/255 apart in [0, 1]
        raise ConfigError("backbone=flow with backbone.dequantize=true needs pixels in [0, 1], and "
                          "data.scaling=standardize rescales them; allowed: data.scaling=unit (data=mnist) "
                          "or none (data=array already in [0, 1]), or backbone.dequantize=false")
    if cfg.k > n_train:
        raise ConfigError(f"k={cfg.k} is larger than the number of training samples "
                          f"({n_train}); allowed: 1..{n_train}")


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _check_value(key: str, value) -> None:
    if key == "k":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"k={value!r} must be an integer >= 1 (the number of mixture components)")
        return
    if value not in COVARIANCE_TYPES:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(COVARIANCE_TYPES)}")
