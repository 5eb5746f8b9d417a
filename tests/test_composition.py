"""One composition per single run: the config ``check_composes`` builds to check a command is
the one Hydra's run is served (``composition.served_from``), so it must be the config Hydra
composes alone, Hydra's own keys included, and the run must not compose it again."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from omegaconf import OmegaConf

from dgmm_lab.composition import check_composes

from conftest import FAST


@pytest.mark.parametrize("overrides", [
    [], ["hydra.run.dir=runs/first", "hydra.job.chdir=true"], ["experiment=vade_mnist"],
    ["model=deep_gmm", "objective=dagmm", "k=4"], ["covariance=diag", "seed=3", "+trainer.benchmark=false"],
    ["~logger"]])
def test_the_checked_composition_is_the_one_hydra_composes_alone(overrides, tmp_path, monkeypatch):
    # --cfg all: Hydra's main composes the config alone (check_composes leaves -- flags to it);
    # its run composes the same with hydra.mode=RUN appended (hydra/_internal/utils.py, _run_app)
    alone = subprocess.run([sys.executable, "-m", "dgmm_lab.train", "--cfg", "all", *overrides, "hydra.mode=RUN"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    monkeypatch.chdir(tmp_path)  # hydra.runtime.cwd
    checked = check_composes(overrides)
    assert OmegaConf.to_yaml(checked) == alone.stdout
    assert checked.hydra.job.name == "train" and checked.hydra.mode.name == "RUN"
    assert list(checked.hydra.overrides.task) == [o for o in overrides if not o.startswith("hydra.")]


COUNTED = textwrap.dedent("""
    import atexit, runpy, sys
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    own, calls = ConfigLoaderImpl.load_configuration, []
    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("run_mode"))
        return own(self, *args, **kwargs)
    ConfigLoaderImpl.load_configuration = counted
    atexit.register(lambda: print("compositions:", len(calls), file=sys.stderr))
    sys.argv = ["train", *sys.argv[1:]]
    runpy.run_module("dgmm_lab.train", run_name="__main__")
""")


def test_a_run_composes_its_config_once_and_records_it_as_hydra_would(tmp_path):
    script = tmp_path / "counted.py"
    script.write_text(COUNTED)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(script), *FAST, "k=2", "hydra.run.dir=run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compositions: 1" in out.stderr  # the check's; Hydra's main composed twice more before
    hydra_yaml = yaml.safe_load((tmp_path / "run" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_yaml["mode"] == "RUN" and hydra_yaml["job"]["name"] == "train"
    assert hydra_yaml["run"]["dir"] == "run" and hydra_yaml["overrides"]["hydra"] == ["hydra.run.dir=run", "hydra.mode=RUN"]
    assert yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()) == [*FAST, "k=2"]
    assert yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())["k"] == 2
    assert (tmp_path / "run" / "metrics.json").exists()
