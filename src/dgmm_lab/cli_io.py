"""What ``dgmm_lab.predict`` and ``dgmm_lab.sample`` share: their ``key=value`` arguments,
the user's input file read in batches (checked against the columns the model was trained
on before anything is computed), a stderr progress line, and files written whole or not
at all (to a temporary name beside them, renamed at the end).

Every user mistake is a :class:`ConfigError`, one ``dgmm_lab: error:`` line with exit 2.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import ConfigError

INPUT_FORMATS = (".npy", ".npz", ".csv", ".mat")


# --------------------------------------------------------------------------- arguments

def parse_args(argv: list[str], allowed: tuple[str, ...], usage: str) -> dict[str, str]:
    """``key=value`` arguments, each key once and one of ``allowed``."""
    first = usage.splitlines()[0]
    args: dict[str, str] = {}
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value; {first}")
        key, value = arg.split("=", 1)
        if key not in allowed:
            raise ConfigError(f"{key} is not an argument of this command; allowed: {', '.join(allowed)}")
        if key in args:
            raise ConfigError(f"{key} is given twice; {first}")
        args[key] = value
    if not args.get("ckpt_path"):
        raise ConfigError(f"ckpt_path is required; {first}")
    return args


def command_main(argv: list[str] | None, usage: str, allowed: tuple[str, ...], required: tuple[str, ...],
                 action) -> None:
    """A command's ``main``: ``--help`` prints ``usage``; otherwise the ``key=value``
    arguments (``ckpt_path`` and ``required`` present) go to ``action(args)``, and a
    ConfigError or a ValueError of the trained model or its input transform becomes one
    ``dgmm_lab: error:`` line with exit status 2."""
    import signal

    from .config import report_and_exit
    from .console import quiet_lightning
    from .lifecycle import Interrupted, SignalGuard

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return
    quiet_lightning()
    try:
        args = parse_args(argv, allowed, usage)
        for key in required:
            if not args.get(key):
                raise ConfigError(f"{key} is required; {usage.splitlines()[0]}")
        with SignalGuard():  # SIGTERM/Ctrl-C: the partial output is removed on the way out
            action(args)
    except ValueError as err:
        report_and_exit(ConfigError(" ".join(str(err).split())))
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"dgmm_lab: interrupted by {signal.Signals(signum).name}; no output was written", file=sys.stderr)
        sys.exit(128 + signum)


def int_arg(args: dict, key: str, default: int, minimum: int | None = 1) -> int:
    text = args.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} is not allowed; allowed: an integer >= {minimum}")
    return value


def bool_arg(args: dict, key: str) -> bool:
    text = args.get(key, "false").lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{key}={args[key]!r} is not allowed; allowed: true, false")
    return text == "true"


def load_model(args: dict):
    """The TrainedModel of ``ckpt_path`` (a checkpoint, or a run dir: its best checkpoint)."""
    from .trained import load

    path = Path(args["ckpt_path"])
    if not path.exists():
        raise ConfigError(f"ckpt_path={str(path)!r} does not exist")
    try:
        return load(path, device=args.get("device", "cpu"))
    except ConfigError as err:  # load names its argument 'path'; the user typed ckpt_path
        message = str(err)
        raise ConfigError("ckpt_path" + message[len("path"):] if message.startswith("path") else message) from None


# --------------------------------------------------------------------------- input files

class InputRows:
    """The rows of ``input=FILE`` as the model's raw inputs: ``len()`` rows, ``batches(size)``
    of (b, ...) float64 arrays, NaN/inf refused with the row number."""

    def __init__(self, path: Path, n_rows: int, batch_fn):
        self.path, self.n_rows, self._batch_fn = path, n_rows, batch_fn

    def __len__(self) -> int:
        return self.n_rows

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start, batch in self._batch_fn(size):
            batch = np.asarray(batch, dtype=np.float64)
            finite = np.isfinite(batch.reshape(len(batch), -1)).all(1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise ConfigError(f"input={str(self.path)!r} has NaN or inf values (first in row {row}, "
                                  "counting from 0); clean or impute them first")
            yield batch

    def read_all(self) -> np.ndarray:
        return np.concatenate(list(self.batches(max(self.n_rows, 1))))


def read_input(path: Path, model) -> InputRows:
    """``input=FILE`` (.npy/.npz/.csv/.mat) checked against what ``model`` was trained on:
    the training columns by name for a .csv when the run was trained on one (other columns
    are ignored), else the count of values per row.  A .npy is memory-mapped."""
    where = f"input={str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ConfigError(f"{where}: unknown format {suffix!r}; allowed: {', '.join(INPUT_FORMATS)}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{where} is an empty file (0 bytes)")
    if suffix == ".csv":
        return _csv_rows(path, model)
    array = _array_of(path, suffix, model)
    if array.ndim == 0 or len(array) == 0:
        raise ConfigError(f"{where} holds no rows (shape {array.shape})")
    _check_count(where, math.prod(array.shape[1:]), model)
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise ConfigError(f"{where}: the values are not numeric (dtype {array.dtype})")

    def batches(size):
        for start in range(0, len(array), size):
            yield start, np.array(array[start:start + size], dtype=np.float64)  # reads (copies) one batch of a memmap
    return InputRows(path, len(array), batches)


def _check_count(where: str, per_row: int, model) -> None:
    try:
        model.transform.check_count(where, per_row)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _array_of(path: Path, suffix: str, model) -> np.ndarray:
    where = f"input={str(path)!r}"
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise ConfigError(f"{where} is not a .npz file (not a zip archive)")
    if suffix == ".npy":
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ConfigError(f"{where} is not a .npy file (no NUMPY header)")
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r")
        if suffix == ".mat":
            from scipy.io import loadmat

            arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        else:
            with np.load(path) as archive:
                arrays = dict(archive)
    except Exception as err:  # numpy, zipfile and scipy raise many kinds for a damaged file
        raise ConfigError(f"{where} is not a readable {suffix} file "
                          f"({type(err).__name__}: {' '.join(str(err).split())})") from None
    trained_key = model.config.data.get("features") if "data" in model.config else None
    for key in ([trained_key] if isinstance(trained_key, str) else []) + ["X", "x"]:
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    keys = ", ".join(sorted(arrays)) or "none"
    wanted = f"{trained_key!r} (the run's data.features)" if isinstance(trained_key, str) else "'X'"
    raise ConfigError(f"{where} has no array {wanted}; keys: {keys}")


def _csv_rows(path: Path, model) -> InputRows:
    """A header line, then one row per sample; the training columns picked by name."""
    where = f"input={str(path)!r}"
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next((r for r in reader if r), None)
        if header is None:
            raise ConfigError(f"{where} has no header line")
        n_rows = 0
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConfigError(f"row {line} of {path.name} has {len(row)} fields and the header "
                                  f"{len(header)}; allowed: one field per column in every row")
            n_rows += 1
    if n_rows == 0:
        raise ConfigError(f"{where} holds no rows (a header only)")
    columns = list(model.transform.columns)
    if columns and all(isinstance(c, str) for c in columns):
        missing = [c for c in columns if c not in header]
        if missing:
            raise ConfigError(f"{where} lacks the column(s) {', '.join(map(repr, missing))} the model was "
                              f"trained on; its columns: {', '.join(header)}; the model's: {', '.join(columns)}")
        index = [header.index(c) for c in columns]
    else:  # trained on an array (or images): every column, by count
        _check_count(where, len(header), model)
        index = list(range(len(header)))

    def batches(size):
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(r for r in reader if r)
            rows, start, line = [], 0, 1
            for row in reader:
                line += 1
                if not row:
                    continue
                try:
                    rows.append([float(row[i]) for i in index])
                except ValueError:
                    from .data.arrays import _is_float

                    bad = next(i for i in index if not _is_float(row[i]))
                    raise ConfigError(f"column {header[bad]!r} of {path.name} is not numeric in row {line} "
                                      f"({row[bad]!r})") from None
                if len(rows) == size:
                    yield start, np.array(rows)
                    start, rows = start + len(rows), []
            if rows:
                yield start, np.array(rows)
    return InputRows(path, n_rows, batches)


# --------------------------------------------------------------------------- output

def check_new(path: Path, overwrite: bool, key: str = "output") -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{key}={str(path)!r} exists; remove it, choose another {key}, or add overwrite=true")
    if path.exists() and path.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a directory; allowed: a file name")


@contextmanager
def written_whole(path: Path, binary: bool = False):
    """Yields a temporary file opened for writing; on success it becomes ``path`` (its
    folders made), on any error it is removed and ``path`` is untouched."""
    folder = path.parent if path.parent.is_dir() else Path(tempfile.gettempdir())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            yield f
        path.parent.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the output is an ordinary file
        if folder == path.parent:
            os.replace(tmp, path)
        else:  # the folder did not exist: made only now, once everything is written
            shutil.move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Progress:
    """``what: done/total rows`` on one stderr line, redrawn, only when stderr is a terminal."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done = what, total, 0
        self.active = sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if self.active:
            pct = 100.0 * self.done / max(self.total, 1)
            print(f"\r{self.what}: {self.done}/{self.total} rows ({pct:.0f}%)", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.active and self.done:
            print(file=sys.stderr, flush=True)
