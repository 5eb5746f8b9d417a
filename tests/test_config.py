"""Bad overrides end before training in one line naming key, value and allowed values."""

import inspect

import numpy as np
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import compose_config, run_cli
from dgmm_lab.config import CONF_DIR, ConfigError, check_config, group_options


@pytest.mark.parametrize("args, expected", [
    (["k=0"], "k=0 must be an integer >= 1"),
    (["covariance=banana"], "covariance='banana' is not allowed; allowed: full, diag, spherical, tied"),
    (["backbone=transformer"], "backbone='transformer' is not a known backbone; allowed: conv, flow, identity, mlp, pca, resnet"),
    (["model=deep_gmm", "objective=gan"], "objective='gan' is not a known objective; allowed: dagmm, mdn, nll, vade"),
    (["model=deep_gmm", "objective=nll", "backbone=mlp"], "backbone='mlp' does not fit objective='nll'"),
    (["k=5000"], "k=5000 is larger than the number of training samples (2100)"),
    (["paths.data_dir=???", "data=mnist"], "paths.data_dir is required but has no value"),
    (["k=2,0", "covariance=full", "-m"], "k=0 must be an integer >= 1"),
    (["model=em_gmm,nonsense", "-m"], "model='nonsense' is not a known model"),
    # raised by constructors and data loading, reported through the same one line
    (["data.shape=banana"], "data.shape='banana' is not allowed; allowed: gmm, moons, rings, spiral"),
    (["model=deep_gmm", "objective=mdn", "data=regression", "backbone=conv"], "backbone=conv expects 28x28 images"),
    (["data=array", "data.path=/nonexistent/x.npz"], "/nonexistent/x.npz"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.pretrain_reconstruction=l1"],
     "objective.pretrain_reconstruction='l1' is not allowed; allowed: likelihood, squared_error"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.init_selection=balance"],
     "objective.init_selection='balance' is not allowed; allowed: likelihood, entropy"),
    (["model.init_selection=even"], "model.init_selection='even' is not allowed; allowed: likelihood, entropy"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.pretrain_restarts=0"],
     "objective.pretrain_restarts=0 is not allowed; allowed: an integer >= 1"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "data=mnist", "objective.pretrain_shift=0.7"],
     "objective.pretrain_shift=0.7 is not allowed; allowed: a number in [0, 0.5)"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.pretrain_rotation=10"],
     "objective.pretrain_rotation=10 rotates or shifts images, and data=SyntheticDataModule has none"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.shift=0.2"],
     "objective.shift=0.2 rotates or shifts images, and data=SyntheticDataModule has none"),
    (["model=deep_gmm", "objective=vade", "backbone=mlp", "data=mnist", "objective.rotation=-5"],
     "objective.rotation=-5 is not allowed; allowed: a number in [0, 180]"),
])
def test_bad_override_fails_with_one_line(args, expected, tmp_path):
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    result = run_cli([*overrides, "debug=fast", f"paths.log_dir={tmp_path}", *flags])
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("dgmm_lab: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")), "nothing may be trained or saved"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_and_names_only_real_arguments(preset, tmp_path):
    # Hydra merges unknown keys from a preset file without complaint; a typo (say
    # objective.pretrain_epoch) would only fail when the run starts, or never for **kwargs
    cfg = compose_config([f"experiment={preset}"], tmp_path)
    if OmegaConf.is_missing(cfg.data, "path"):  # a preset for your own file (data=array)
        np.savez(tmp_path / "own.npz", X=np.zeros((10, 2)), y=np.zeros(10))
        cfg = compose_config([f"experiment={preset}", f"data.path={tmp_path / 'own.npz'}"], tmp_path)
    check_config(cfg)
    for group in ("model", "data", "backbone", "objective"):
        node = cfg.get(group)
        if node is None:
            continue  # the EM-GMM has no objective
        accepted = init_arguments(get_class(node._target_))
        unknown = sorted(set(node) - accepted - {"_target_", "_partial_"})
        assert not unknown, f"experiment={preset}: {group} has no argument(s) {unknown}"


@pytest.mark.parametrize("search", group_options("hparams_search"))
def test_every_search_draws_only_settings_its_run_has(search):
    from dgmm_lab.composition import check_search_params, compose

    cfg = compose([f"hparams_search={search}"], with_hydra=True)
    params = list(cfg.hydra.sweeper.params)
    assert {"k", "covariance"} <= set(params) and len(params) > 2, params
    check_search_params(cfg)  # every searched key exists in the run it searches


def test_a_search_over_keys_the_run_lacks_is_refused():
    from dgmm_lab.composition import check_search_params, compose

    with pytest.raises(ConfigError, match="searches objective.lambda_energy"):
        check_search_params(compose(["hparams_search=dagmm", "objective=nll"], with_hydra=True))


def init_arguments(cls) -> set[str]:
    """Keyword arguments a class takes, following **kwargs up its base classes."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
    return names - {"self"}
