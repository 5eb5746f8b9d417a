import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from dgmm_lab.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
FAST = ["debug=fast", "trainer.enable_model_summary=false"]


def compose_config(overrides: list[str], output_dir: Path):
    """The config ``python -m dgmm_lab.train`` would build, with its output dir set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in_process(overrides: list[str], output_dir: Path) -> dict:
    """Run the training entry point in this process; returns metrics.json."""
    from dgmm_lab.training import run

    cfg = compose_config(overrides, output_dir)
    run(cfg)
    return json.loads((output_dir / "metrics.json").read_text())


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """``python -m dgmm_lab.train ARGS`` in a subprocess (what a user types)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dgmm_lab.train", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def mnist_dir() -> str:
    path = os.environ.get("DGMM_LAB_DATA_DIR")
    if not path or not (Path(path) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST needs DGMM_LAB_DATA_DIR pointing at a folder with MNIST/raw/*.gz "
                    "(CI sets it)")
    return path


@pytest.fixture
def odds_dir() -> Path:
    """The public ODDS anomaly sets (cardio.mat, ...): DGMM_LAB_ODDS_DIR, as CI sets it."""
    path = os.environ.get("DGMM_LAB_ODDS_DIR")
    if not path or not (Path(path) / "cardio.mat").exists():
        pytest.skip("the ODDS anomaly sets need DGMM_LAB_ODDS_DIR pointing at a folder with cardio.mat "
                    "(CI sets it)")
    return Path(path)


def load_model(run_dir: Path, ckpt: str = "last.ckpt"):
    """The trained model of a finished run, rebuilt from its config.yaml and checkpoint."""
    import torch

    from dgmm_lab.evaluate import load_run_config
    from dgmm_lab.training import build

    path = run_dir / "checkpoints" / ckpt
    datamodule, model = build(load_run_config(path, []))
    model.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    return datamodule, model.eval()
