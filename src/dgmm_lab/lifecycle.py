"""A run directory's lifecycle: one owner at a time, a status a scheduler can read, and
checkpoints checked before anything trusts them.

``status.json`` in the run directory says ``running``, ``finished``, ``interrupted`` (with the
signal and the last finished epoch) or ``failed``; ``dgmm_lab.report`` reads it.  ``run.lock``
holds the PID and host of the process that owns the directory: a second run into the same
directory stops at once, and a lock whose process is gone (SIGKILL, a crashed node) is taken
over with a log line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)

class Interrupted(SystemExit):
    """A run stopped by a signal; its ``code`` is the shell's 128 + signal number (143, 130)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def global_rank_from_env() -> int:
    """This process's rank before the trainer exists (Lightning's re-launched DDP ranks set
    LOCAL_RANK/NODE_RANK, Slurm sets SLURM_PROCID, torchrun sets RANK)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0) or 0) + int(os.environ.get("LOCAL_RANK", 0) or 0)


def write_json_atomically(path: Path, data: dict) -> None:
    """A reader (report, a scheduler) never sees half a file; a kill mid-write leaves the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    """The run's status; a run from before status.json existed counts as finished when it
    has metrics.json (only a finished run writes it)."""
    path = run_dir / "status.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            return {"state": "unknown", "reason": "status.json is not valid JSON"}
    if (run_dir / "metrics.json").exists():
        return {"state": "finished"}
    return {}


def write_status(run_dir: Path, state: str, **details) -> None:
    record = {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
    write_json_atomically(run_dir / "status.json", record)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class RunLock:
    """``run.lock`` (O_EXCL) naming the owner; released on exit, taken over when stale."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "slurm_job": os.environ.get("SLURM_JOB_ID")}, f)
            self.held = True
            return
        raise ConfigError(f"output dir {self.path.parent} is locked ({self.path}) and the lock could not be taken")

    def _take_over_if_stale(self) -> None:
        owner = lock_owner(self.path.parent)
        pid, host = owner.get("pid"), owner.get("host")
        if owner.get("slurm_job") is not None and owner["slurm_job"] == os.environ.get("SLURM_JOB_ID"):
            # this Slurm job before its requeue, maybe on another node: it is gone
            log.warning("taking over the lock %s of this Slurm job's run before its requeue (PID %s on %s)",
                        self.path, pid, host)
        elif lock_owner_alive(self.path.parent) and pid != os.getpid():
            if host == socket.gethostname():
                raise ConfigError(f"output dir {self.path.parent} is in use by PID {pid} on {host} ({self.path}); "
                                  "wait for it to finish, or give this run another hydra.run.dir")
            raise ConfigError(f"output dir {self.path.parent} is locked by PID {pid} on host {host} ({self.path}); "
                              "if that run is gone, delete the lock file")
        else:
            log.warning("taking over the stale lock %s of PID %s (that process is gone)", self.path, pid)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class SignalGuard:
    """SIGTERM/SIGINT become :class:`Interrupted` where it is safe to stop.

    An exception raised by a handler lands at whatever bytecode runs: inside a weakref
    callback or a ``__del__`` Python prints it and carries on (seen: a Ctrl-C'd run trained
    to its last epoch and exited 0).  So inside ``trainer.fit``/``test`` (``in_fit``) the
    handler only records the signal: SIGTERM is Lightning's (its handler runs first and
    stops the loop at a step boundary), SIGINT raises KeyboardInterrupt at the next
    :func:`stop_point` (every batch; Lightning shuts down cleanly on it), and a second
    Ctrl-C raises at once.  Elsewhere (data loading, writing results) the handler raises at
    once, and :meth:`raise_if_signalled` before results are written catches one that was
    swallowed.  While the stop is recorded (``recording``) further signals are ignored: they
    would cut the status and the message short; where the process then exits (``exiting``)
    Ctrl-C stays ignored.  Under submitit (Slurm) its SIGTERM bypass
    and USR2 requeue stay untouched.
    """

    def __init__(self):
        self.in_fit = False
        self.received: int | None = None
        self.stop_pending = False
        self.recording = False  # the stop is being written down: another signal would cut that short
        self.exiting = False  # and the process ends with it: no handler to restore
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalGuard":
        global _ACTIVE
        managed = "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_FOLDER" in os.environ
        for signum in (signal.SIGINT,) if managed else (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        _ACTIVE = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        for signum, handler in self._previous.items():
            # a second Ctrl-C during the interpreter's teardown would end the process by signal
            # or with a traceback instead of the recorded stop's exit 130
            signal.signal(signum, signal.SIG_IGN if self.exiting and signum == signal.SIGINT else handler)
        _ACTIVE = None

    def _handle(self, signum, frame) -> None:
        if self.recording:
            return
        again = self.received is not None
        self.received = signum
        if not self.in_fit:
            raise Interrupted(signum)
        if signum == signal.SIGINT:
            if again:
                raise KeyboardInterrupt
            self.stop_pending = True

    def raise_if_signalled(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)


_ACTIVE: SignalGuard | None = None


def stop_point() -> None:
    """Where a loop may stop: raises the KeyboardInterrupt of a Ctrl-C received since."""
    if _ACTIVE is not None and _ACTIVE.stop_pending:
        _ACTIVE.stop_pending = False
        raise KeyboardInterrupt


RESULTS = ("metrics.json", "status.json", "config.yaml", "overrides.yaml", "checkpoints", "tensorboard", "csv", "ranks", "error.txt")


def archive_previous_results(run_dir: Path) -> Path | None:
    """resume=false into a used run dir: the old results move to ``replaced-<time>/`` (not
    deleted, not mixed with the new run's checkpoints and events)."""
    present = [run_dir / name for name in RESULTS if (run_dir / name).exists()]
    if not present:
        return None
    target = run_dir / f"replaced-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    target.mkdir()
    for path in present:
        os.replace(path, target / path.name)
    log.warning("resume=false: the previous results in %s were moved to %s", run_dir, target)
    return target


def check_checkpoint(path: Path, key: str, remedy: str = "give another checkpoint") -> dict:
    """The checkpoint's contents, or one line naming the file, what is wrong with it and the way out."""
    import torch

    size = path.stat().st_size if path.exists() else None
    if size is None:
        raise ConfigError(f"{key}: {path} does not exist")
    problem = None
    if size == 0:
        problem = "it is empty (0 bytes)"
    else:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers only
        except Exception as err:  # noqa: BLE001 (truncated zip, pickle garbage, ...: all the same to the user)
            problem = f"it cannot be read as a checkpoint ({type(err).__name__}; {size} bytes, truncated or not a checkpoint)"
        else:
            if not isinstance(content, dict) or "state_dict" not in content:
                problem = "it is not a Lightning checkpoint (no state_dict)"
    if problem:
        raise ConfigError(f"{key}: checkpoint {path} is unusable: {problem}; {remedy}")
    return content


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved in, or None when there is none (or it is unreadable)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001
        return None


def lock_owner(run_dir: Path) -> dict:
    """{'pid', 'host'} of the run dir's lock; {} without a readable one."""
    try:
        return json.loads((run_dir / "run.lock").read_text() or "{}")
    except (OSError, ValueError):
        return {}


def lock_owner_alive(run_dir: Path) -> bool:
    """Whether the process named in the run dir's lock is alive (on another host: assumed so)."""
    owner = lock_owner(run_dir)
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return isinstance(owner.get("pid"), int) and _alive(owner["pid"])
