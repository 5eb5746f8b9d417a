"""A run's lifecycle as a user and a scheduler see it: signals give the shell's exit codes and
an ``interrupted`` status, a finished run is never retrained or rewritten, one run dir has one
owner, broken checkpoints are one line, checkpoints are self-contained."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT

DEEP_LONG = ["model=deep_gmm", "trainer.max_epochs=400", "trainer.enable_progress_bar=false"]


def train(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "dgmm_lab.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, **kw)


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dgmm_lab.train", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_epoch(run_dir: Path, proc: subprocess.Popen, epoch: int = 1, timeout: float = 120) -> None:
    """Until checkpoints/last.ckpt of at least ``epoch`` exists (the run is training)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                if torch.load(last, weights_only=False)["epoch"] >= epoch:
                    return
            except Exception:  # being written
                pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} in {run_dir} (exit {proc.poll()})")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dgmm_lab: error:")]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every result file's bytes (not Hydra's .hydra/ or the log, which each start appends to)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_gives_the_shells_exit_code_and_an_interrupted_status(signum, code, tmp_path):
    run_dir = tmp_path / "run"
    proc = start([*DEEP_LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_epoch(run_dir, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert status["last_checkpoint_epoch"] == saved["epoch"] >= 1
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "run.lock").exists()
    said = [line for line in stderr.splitlines() if line.startswith("dgmm_lab: interrupted")]
    assert said == [f"dgmm_lab: interrupted by {signal.Signals(signum).name}; checkpoints/last.ckpt is of "
                    f"epoch {saved['epoch']}; run the same command again to resume ({run_dir})"]
    assert "Traceback" not in stderr


def test_a_second_ctrl_c_while_the_run_shuts_down_still_exits_130(tmp_path):
    # before: the second SIGINT, after the interruption was said, ended the process by
    # signal (exit -2) or with a KeyboardInterrupt traceback from the interpreter's teardown
    run_dir = tmp_path / "run"
    proc = start([*DEEP_LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_epoch(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    said = []
    for line in proc.stderr:
        said.append(line)
        if line.startswith("dgmm_lab: interrupted"):
            break
    while proc.poll() is None:  # Ctrl-C held down until the process is gone
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(said) + rest
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"


@pytest.mark.parametrize("model", ["em_gmm", pytest.param("deep_gmm", marks=pytest.mark.slow)])
def test_a_finished_run_is_not_retrained_or_rewritten(model, tmp_path):
    args = [f"model={model}", "debug=fast", f"hydra.run.dir={tmp_path / 'run'}"]
    first = train(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "finished"
    before = snapshot(tmp_path / "run")
    again = train([*args, "trainer.max_epochs=5"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"dgmm_lab: {tmp_path / 'run'} holds a finished run" in again.stderr
    assert "resume=false" in again.stderr
    assert snapshot(tmp_path / "run") == before  # byte for byte
    other = train([*args, "k=7"], tmp_path)  # its results are not this command's: said, and kept
    said = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(said) == 1, other.stderr[-3000:]
    assert said[0].startswith(f"dgmm_lab: error: {tmp_path / 'run'} holds a finished run trained with k=")
    assert "(now 7)" in said[0] and "resume=false" in said[0], said
    assert snapshot(tmp_path / "run") == before

    fresh = train([*args, "resume=false"], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    archived = list((tmp_path / "run").glob("replaced-*"))
    assert len(archived) == 1 and (archived[0] / "metrics.json").read_bytes() == before["metrics.json"]
    assert len(list((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))) == 1  # no -v1 beside old ones


def test_a_second_run_into_a_busy_dir_stops_and_a_stale_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    owner = start([*DEEP_LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_epoch(run_dir, owner)
    config = (run_dir / "config.yaml").read_bytes()
    second = train(["model=deep_gmm", "seed=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert second.returncode == 2
    assert error_lines(second.stderr) == [
        f"dgmm_lab: error: output dir {run_dir} is in use by PID {owner.pid} on {os.uname().nodename} "
        f"({run_dir / 'run.lock'}); wait for it to finish, or give this run another hydra.run.dir"]
    assert (run_dir / "config.yaml").read_bytes() == config  # the second run wrote nothing of its own

    owner.kill()  # SIGKILL: no chance to release the lock
    owner.communicate(timeout=60)
    assert (run_dir / "run.lock").exists()
    taken = train(["model=deep_gmm", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
                   f"hydra.run.dir={run_dir}", "resume=false"], tmp_path)
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert f"taking over the stale lock {run_dir / 'run.lock'} of PID {owner.pid}" in taken.stdout + taken.stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A run dir left by SIGTERM: resumable, with last.ckpt."""
    cwd = tmp_path_factory.mktemp("interrupted")
    proc = start([*DEEP_LONG, f"hydra.run.dir={cwd / 'run'}"], cwd)
    wait_for_epoch(cwd / "run", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    return cwd / "run"


@pytest.mark.parametrize("damage", ["truncated", pytest.param("empty", marks=pytest.mark.slow),
                                    pytest.param("not a checkpoint", marks=pytest.mark.slow)])
def test_a_broken_last_checkpoint_is_one_line_and_is_left_alone(damage, interrupted_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_run, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    last.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "not a checkpoint": b"hello\n"}[damage])
    damaged = snapshot(run_dir)

    again = train([*DEEP_LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 2
    lines = error_lines(again.stderr)
    assert len(lines) == 1 and str(last) in lines[0] and "resume=false" in lines[0], again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert snapshot(run_dir) == damaged

    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", f"ckpt_path={last}"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert ev.returncode == 2 and len(error_lines(ev.stderr)) == 1 and str(last) in ev.stderr, ev.stderr[-2000:]
    assert "Traceback" not in ev.stderr


def test_resuming_with_other_settings_is_one_line_and_changes_nothing(interrupted_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_run, run_dir)
    before = snapshot(run_dir)
    other = train(["model=deep_gmm", "k=5", "covariance=diag", "trainer.max_epochs=400",
                   "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert other.returncode == 2
    (line,) = error_lines(other.stderr)
    assert line.startswith(f"dgmm_lab: error: resume: {run_dir / 'checkpoints' / 'last.ckpt'} was trained with "
                           "covariance='full' (now 'diag'), k=3 (now 5)"), line
    assert snapshot(run_dir) == before


def test_resuming_past_a_smaller_max_epochs_is_one_line_and_changes_nothing(interrupted_run, tmp_path):
    """Lightning refuses a checkpoint past trainer.max_epochs with a traceback: said first."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_run, run_dir)
    before = snapshot(run_dir)
    # epochs trained, whether SIGTERM's checkpoint came at an epoch's end or within one
    progress = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["loops"]["fit_loop"]
    trained = progress["epoch_progress"]["current"]["processed"]
    shorter = [a for a in DEEP_LONG if not a.startswith("trainer.max_epochs=")]
    again = train([*shorter, f"trainer.max_epochs={trained - 1}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    (line,) = error_lines(again.stderr)
    assert line.startswith(f"dgmm_lab: error: trainer.max_epochs={trained - 1} is below the {trained} epochs "), line
    assert f"trainer.max_epochs >= {trained}" in line and "resume=false" in line, line
    assert snapshot(run_dir) == before
    # exactly the epochs trained resumes, and finishes with nothing left to train
    exact = train([*shorter, f"trainer.max_epochs={trained}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert exact.returncode == 0, exact.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("module", ["hydra", "torch"])
def test_a_signal_while_the_command_imports_is_one_line_and_leaves_nothing(module, signum, code, tmp_path):
    # a real signal at a fixed point: a package of that name, first on the path, signals the
    # process as it is imported (hydra: the command line's own imports; torch: the run's)
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"import os, time\nos.kill(os.getpid(), {int(signum)})\ntime.sleep(5)\n")
    path = os.pathsep.join([str(tmp_path / "fake"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    args = ["model=deep_gmm"] if module == "torch" else []
    # as from a shell: pytest-xdist's workers ignore SIGINT, and a child inherits that (Python
    # installs its KeyboardInterrupt handler only where SIGINT is not ignored)
    done = subprocess.run([sys.executable, "-m", "dgmm_lab.train", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": path},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == (f"dgmm_lab: interrupted by {signal.Signals(signum).name} before training "
                                   "started; nothing was trained")
    assert not list(tmp_path.glob("outputs/train/runs/*"))  # no run dir of a run that never began


def test_without_a_run_dir_the_interruption_names_the_dir_to_resume(tmp_path):
    proc = start(DEEP_LONG, tmp_path)
    runs = tmp_path / "outputs" / "train" / "runs"
    deadline = time.time() + 60
    while time.time() < deadline and not list(runs.glob("*/checkpoints/last.ckpt")):
        time.sleep(0.2)
    (run_dir,) = runs.iterdir()
    wait_for_epoch(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert f"to resume, run the same command with hydra.run.dir={run_dir} ({run_dir})" in stderr


def test_a_checkpoint_copied_out_of_its_run_dir_evaluates_to_the_same_numbers(tmp_path):
    # test_ckpt=last: metrics.json's test/* are those of last.ckpt
    run = train(["model=deep_gmm", "debug=fast", "test_ckpt=last", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = json.loads((tmp_path / "run" / "metrics.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "run" / "checkpoints" / "last.ckpt", elsewhere / "model.ckpt")
    shutil.rmtree(tmp_path / "run")
    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", "ckpt_path=model.ckpt"],
                        cwd=elsewhere, capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (metrics_file,) = (elsewhere / "eval").glob("*/metrics.json")
    assert json.loads(metrics_file.read_text()) == {k: v for k, v in expected.items() if k.startswith("test/")}
    changed = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", "ckpt_path=model.ckpt", "k=5"],
                             cwd=elsewhere, capture_output=True, text=True)
    assert changed.returncode == 2 and error_lines(changed.stderr) == [
        "dgmm_lab: error: k=5 cannot change a trained model; allowed: data=GROUP, data.* (data.limit_test=1000, "
        "data.path=...), trainer.accelerator, num_threads"], changed.stderr
    typo = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", "ckpt_path=model.ckpt", "data.n_sample=100"],
                          cwd=elsewhere, capture_output=True, text=True)
    assert typo.returncode == 2 and error_lines(typo.stderr) == [
        "dgmm_lab: error: data.n_sample is not a setting of dgmm_lab.data.SyntheticDataModule; did you mean "
        "data.n_samples? allowed: shape, n_samples, dim, n_clusters, separation, covariance_type, noise, seed"], typo.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["eval", "model.ckpt"]  # nothing new written
    assert len(list((elsewhere / "eval").iterdir())) == 1


def test_a_successful_run_ends_with_its_metrics_directory_and_next_commands(tmp_path):
    result = train([], tmp_path)  # the README's first command, in a fresh directory
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    tail = result.stdout.strip().splitlines()[-12:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert any(line.split() == ["test/nll", f"{metrics['test/nll']:.6g}"] for line in tail), tail
    assert any(line.startswith("EM converged after") and "model.tol=0.001" in line for line in tail), tail
    one = train(["trainer.max_epochs=1", "hydra.run.dir=one"], tmp_path)  # one iteration has no change to compare
    assert "EM stopped at trainer.max_epochs=1 after 1 iteration before converging" in one.stdout, one.stdout[-2000:]
    assert f"run dir:     {run_dir}" in "\n".join(tail)
    assert f"tensorboard --logdir {run_dir} --host 127.0.0.1" in "\n".join(tail)
    everything = result.stdout + result.stderr
    for noise in ("💡", "litlogger", "litmodels", "LeafSpec", "configure_optimizers` returned `None`",
                  "Epoch 1/49", "weights_only"):
        assert noise not in everything, noise
    assert "EM iteration 1: train log-likelihood" in everything


@pytest.mark.slow
def test_a_sweep_lists_its_interrupted_job_and_the_report_shows_it(tmp_path):
    sweep = tmp_path / "outputs" / "train" / "multiruns"
    proc = start(["model=deep_gmm", "trainer.enable_progress_bar=false", "trainer.max_epochs=2,400", "-m"], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep.glob("*/*trainer.max_epochs=400/checkpoints/last.ckpt")):
        time.sleep(0.2)
    (job,) = sweep.glob("*/*trainer.max_epochs=400")
    wait_for_epoch(job, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    report = subprocess.run([sys.executable, "-m", "dgmm_lab.report", str(job.parent)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "1 of 2 jobs finished, 1 interrupted" in report.stdout
    row = next(line for line in report.stdout.splitlines() if "| 400 |" in line)
    assert "interrupted (SIGTERM; last.ckpt of epoch" in row


@pytest.mark.slow
def test_sigterm_to_one_job_of_a_parallel_sweep_interrupts_that_job_only(tmp_path):
    """launcher=joblib: the signalled job is interrupted and resumable, its worker and the
    sweep's other jobs go on, and the sweep ends with its summary and exit status 1."""
    sweep = tmp_path / "outputs" / "train" / "multiruns"
    proc = start(["model=deep_gmm", "trainer.enable_progress_bar=false", "trainer.max_epochs=3000,20,21",
                  "launcher=joblib", "hydra.launcher.n_jobs=2", "-m"], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep.glob("*/*trainer.max_epochs=3000/run.lock")):
        time.sleep(0.2)
    (job,) = sweep.glob("*/*trainer.max_epochs=3000")
    wait_for_epoch(job, proc)
    os.kill(json.loads((job / "run.lock").read_text())["pid"], signal.SIGTERM)  # the job's worker, not the sweep
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "sweep: 2 of 3 jobs finished, 1 interrupted" in out
    assert json.loads((job / "status.json").read_text())["state"] == "interrupted"
    assert "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    ([], "dgmm_lab: error: expected at least one SWEEP_DIR, got none; usage: python -m dgmm_lab.report SWEEP_DIR"),
    (["--rwa"], "dgmm_lab: error: unknown option '--rwa'; usage: python -m dgmm_lab.report SWEEP_DIR"),
    (["nonexistent"], "dgmm_lab: error: SWEEP_DIR='nonexistent' is not a directory; usage: "),
    (["."], "dgmm_lab: error: SWEEP_DIR='.' holds no job directories (with .hydra/overrides.yaml); "),
])
def test_report_usage_errors_are_one_line(args, expected, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dgmm_lab.report", *args], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_without_checkpoint_is_one_line(tmp_path):
    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate"], cwd=ROOT, capture_output=True, text=True)
    assert ev.returncode == 2 and ev.stderr.strip() == (
        "dgmm_lab: error: ckpt_path is required; usage: python -m dgmm_lab.evaluate "
        "ckpt_path=CHECKPOINT [output_dir=DIR] [key=value ...]")


def test_evaluating_on_data_of_another_shape_is_one_line_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "five.npy", rng.normal(size=(300, 5)))
    np.save(tmp_path / "three.npy", rng.normal(size=(300, 3)))
    run_dir = tmp_path / "run"
    assert train(["model=em_gmm", "k=2", "data=array", "data.path=five.npy", f"hydra.run.dir={run_dir}"],
                 tmp_path).returncode == 0
    ev = subprocess.run([sys.executable, "-m", "dgmm_lab.evaluate", f"ckpt_path={run_dir}", "data.path=three.npy"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert ev.returncode == 2 and "Traceback" not in ev.stderr, ev.stderr[-2000:]
    (line,) = error_lines(ev.stderr)
    assert "data.path=three.npy gives samples of shape (3,)" in line and "trained on samples of shape (5,)" in line
    assert not (run_dir / "eval").exists()


@pytest.mark.parametrize("module", ["evaluate", "report"])
def test_help_prints_usage(module):
    result = subprocess.run([sys.executable, "-m", f"dgmm_lab.{module}", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m dgmm_lab.{module}")
    assert not result.stderr


def test_a_jobs_own_bad_input_fails_that_job_not_the_sweep(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "ok.csv", rng.normal(size=(300, 2)), delimiter=",", header="a,b", comments="")
    result = train(["data=array", "data.path=empty.csv,ok.csv", "k=2", "debug=fast", "-m"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # all jobs ran; one failed
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert f"sweep: 1 of 2 jobs finished, 1 failed: {sweep}" in result.stdout
    (bad,) = sweep.glob("data.path=empty.csv*")
    assert (bad / "error.txt").read_text().startswith("dgmm_lab: error: data.path=")
    assert not (bad / "checkpoints").exists()
    assert (next(sweep.glob("data.path=ok.csv*")) / "metrics.json").exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    from dgmm_lab.config import ConfigError
    from dgmm_lab.lifecycle import RunLock

    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "node-a", "slurm_job": "4242"}))
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job: the lock stands
    with pytest.raises(ConfigError, match="is locked by PID 1 on host node-a"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job after its requeue
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_a_ctrl_c_in_fit_stops_at_the_next_stop_point_even_from_inside_a_weakref_callback():
    """A handler's exception raised inside a weakref callback is printed and dropped by
    Python (a Ctrl-C'd run once trained to its end and exited 0): in fit the signal is only
    recorded, and the loop's next stop point raises; a second Ctrl-C raises at once."""
    import weakref

    from dgmm_lab.lifecycle import SignalGuard, stop_point

    class Thing:
        pass

    def signalled_while_collected(_):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes for the handler to run on, inside this callback
            pass

    with SignalGuard() as guard:
        guard.in_fit = True
        thing = Thing()
        ref = weakref.ref(thing, signalled_while_collected)
        del thing
        assert ref() is None and guard.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stop_point()
        stop_point()  # one stop per Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
