"""The README's commands, verbatim, as a new user runs them.

Every shell command in the README's code blocks runs in one fresh copy of the project (its
own working directory, the default output location, no ``hydra.*``/``paths.*`` overrides and
none of the suite's environment but ``DGMM_LAB_DATA_DIR``), in README order, with only
work-shrinking overrides appended (``SHRINK``).  A command marked ``# untested: reason`` in
the README is listed as skipped with that reason; so are commands that need MNIST, DDP or
Slurm where those are missing.  ``$ command`` lines followed by output must print exactly
that output.  Each command's time goes to ``outputs/readme_commands.txt``.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent

# appended to a command containing the key: fewer epochs or samples, nothing else
SHRINK = {
    "dgmm_lab.train model=deep_gmm k=10 -m": "trainer.max_epochs=3",
    "model=deep_gmm k=10 covariance=diag -m": "trainer.max_epochs=3",
    "experiment=em_mnist_pca": "data.limit_train=5000 data.limit_test=1000 trainer.max_epochs=5",
    "experiment=vade_moons": "objective.pretrain_epochs=2 trainer.max_epochs=3",
    "experiment=vade_mnist": ("data.limit_train=1000 data.val_size=500 data.limit_test=500 objective.pretrain_epochs=1 "
                              "objective.pretrain_restarts=1 objective.n_init=1 trainer.max_epochs=1"),
    "backbone=flow": "trainer.max_epochs=2",
    "objective=dagmm,vade k=5,10 -m": "trainer.max_epochs=2",
    "experiment=mdn_bishop": "trainer.max_epochs=3",
    "experiment=mdn_mnist_halves": "data.limit_train=2000 data.val_size=500 data.limit_test=500 trainer.max_epochs=1",
    "hparams_search=dagmm": "hydra.sweeper.n_trials=2 trainer.max_epochs=2",
    "experiment=anomaly": "objective.pretrain_epochs=2 trainer.max_epochs=3",
}
NEEDS_MNIST = ("mnist",)
ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "DGMM_LAB_DATA_DIR")


def readme_commands(text: str) -> list[dict]:
    """{'command', 'untested', 'expected'} for every command line of every fenced code block
    (``bash`` blocks: each line a command, backslash continuations joined, comments cut;
    plain blocks: ``$ command`` lines with the output lines after them)."""
    found = []
    for lang, body in re.findall(r"^ *```(\w*)\n(.*?)^ *```", text, flags=re.S | re.M):
        lines = [line.strip() for line in body.replace("\\\n", " ").splitlines()]
        if lang == "bash":
            for line in lines:
                command, _, comment = line.partition("#")
                if command.strip():
                    untested = comment.strip()[len("untested:"):].strip() if comment.strip().startswith("untested:") else None
                    found.append({"command": " ".join(command.split()), "untested": untested, "expected": None})
        elif lines and lines[0].startswith("$ "):
            found.append({"command": lines[0][2:], "untested": None, "expected": "\n".join(lines[1:]).strip()})
    return found


COMMANDS = readme_commands(README.read_text())
TIMES: list[tuple[str, float, str]] = []


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy of the project as a clone has it; the venv is the suite's own (its mtimes
    are kept, so scripts/setup.sh finds it installed and installs nothing)."""
    copy = tmp_path_factory.mktemp("readme") / "dgmm_lab"
    ignore = shutil.ignore_patterns(".git", ".venv", "outputs", "data", ".gpu", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, copy, ignore=ignore)
    (copy / ".venv").symlink_to(VENV_BIN.parent)
    (copy / "outputs").mkdir()
    yield copy
    lines = [f"{seconds:7.1f} s  {outcome:<8} {command}" for command, seconds, outcome in TIMES]
    (ROOT / "outputs").mkdir(exist_ok=True)
    (ROOT / "outputs" / "readme_commands.txt").write_text("\n".join(lines) + "\n")


def user_env() -> dict:
    env = {k: os.environ[k] for k in ENV_KEPT if k in os.environ}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"  # the venv, activated
    return env


def newest(path: Path) -> str:
    dirs = sorted(p.name for p in path.iterdir() if p.is_dir())
    assert dirs, f"nothing under {path} yet for <time>"
    return dirs[-1]


def concrete(command: str, cwd: Path) -> str:
    """Placeholders a user fills in: <time> = the newest run or sweep dir."""
    for kind in ("runs", "multiruns"):
        placeholder = f"outputs/train/{kind}/<time>"
        if placeholder in command:
            command = command.replace(placeholder, f"outputs/train/{kind}/{newest(cwd / 'outputs' / 'train' / kind)}")
    for key, extra in SHRINK.items():
        if key in command:  # appended as a user would, after a trailing -m too
            command = f"{command} {extra}"
    return command


def skip_reason(entry: dict) -> str | None:
    command = entry["command"]
    if entry["untested"]:
        return f"marked in the README: {entry['untested']}"
    if any(word in command for word in NEEDS_MNIST) and not os.environ.get("DGMM_LAB_DATA_DIR"):
        return "needs real MNIST: DGMM_LAB_DATA_DIR is not set"
    return None


def user_data(cwd: Path) -> None:
    """``data.path=my.npz``: the user's own file, features X and labels y."""
    if not (cwd / "my.npz").exists():
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=6, size=(5, 4))
        y = rng.integers(0, 5, size=1500)
        np.savez(cwd / "my.npz", X=centres[y] + rng.normal(size=(1500, 4)), y=y)


NEW_USER_FILES = ("my.csv", "new.csv", "new.npy", "x.npy")


def prediction_data(cwd: Path) -> None:
    """The files of the "Use a trained model" commands: ``my.csv`` (columns a, b, c, d and a
    label y), new rows ``new.csv`` (a, b, c, d) and ``new.npy`` (like my.npz's features, a
    few far away), and inputs ``x.npy`` of Bishop's MDN."""
    if (cwd / "x.npy").exists():
        return
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6, size=(5, 4))
    y = rng.integers(0, 5, size=1500)
    x = centres[y] + rng.normal(size=(1500, 4))
    np.savetxt(cwd / "my.csv", np.c_[x, y], delimiter=",", header="a,b,c,d,y", comments="", fmt="%.6g")
    np.savetxt(cwd / "new.csv", x[:200] + rng.normal(scale=0.1, size=(200, 4)), delimiter=",",
               header="a,b,c,d", comments="", fmt="%.6g")
    np.save(cwd / "new.npy", np.r_[x[:190], rng.normal(scale=30, size=(10, 4))])
    np.save(cwd / "x.npy", np.linspace(0.0, 1.0, 50)[:, None])


def as_param(entry: dict):
    """Multi-process commands carry the ddp mark, like the suite's other DDP tests."""
    marks = [pytest.mark.ddp] if "trainer=ddp" in entry["command"] and not entry["untested"] else []
    return pytest.param(entry, marks=marks, id=entry["command"][:70])


@pytest.mark.slow
@pytest.mark.parametrize("entry", [as_param(c) for c in COMMANDS])
def test_readme_command(entry, project):
    reason = skip_reason(entry)
    if reason:
        TIMES.append((entry["command"], 0.0, "skipped"))
        pytest.skip(reason)
    if "my.npz" in entry["command"]:
        user_data(project)
    if any(name in entry["command"] for name in NEW_USER_FILES):
        prediction_data(project)
    if "setup.sh" in entry["command"]:
        venv = project / ".venv"
        assert not (project / "pyproject.toml").stat().st_mtime > (venv / ".installed").stat().st_mtime, \
            "setup.sh would reinstall into the suite's venv from the copy"
    command = concrete(entry["command"], project)
    t0 = time.perf_counter()
    result = subprocess.run(["bash", "-c", command], cwd=project, env=user_env(), capture_output=True,
                            text=True, timeout=900)
    TIMES.append((command, time.perf_counter() - t0, f"exit {result.returncode}"))
    if entry["expected"] is not None:
        assert (result.stdout + result.stderr).strip() == entry["expected"], result.stderr[-3000:]
        return
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def test_readme_lists_commands_and_the_headline():
    commands = [c["command"] for c in COMMANDS]
    assert "python -m dgmm_lab.train model=deep_gmm k=10 -m" in commands
    assert len(commands) >= 15
    for c in COMMANDS:  # every command names what it runs: no silent shell tricks
        assert shlex.split(c["command"])[0] in ("python", "bash", "tensorboard"), c


def test_the_readmes_advice_to_shrink_an_mnist_preset_is_what_its_tests_append():
    assert SHRINK["experiment=vade_mnist"] in " ".join(README.read_text().replace("`", " ").split())


def test_the_headline_sweep_as_written_from_an_empty_directory(tmp_path):
    """The design card's command, from a directory that is not the project, default output
    location, only the epoch count shortened."""
    result = subprocess.run(["bash", "-c", "python -m dgmm_lab.train model=deep_gmm k=10 -m trainer.max_epochs=3"],
                            cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    (job,) = [p for p in sweep.iterdir() if p.is_dir()]
    assert job.name == "k=10,model=deep_gmm,trainer.max_epochs=3"
    assert (job / "metrics.json").exists() and (job / "checkpoints" / "last.ckpt").exists()
    assert f"sweep: 1 of 1 jobs finished: {sweep}" in result.stdout
    assert f"python -m dgmm_lab.report {sweep}" in result.stdout
