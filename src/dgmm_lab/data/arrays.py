"""The user's own data: ``.npy``, ``.npz``, ``.csv`` or MATLAB ``.mat`` (keys ``X``/``y`` as
in the common anomaly-detection benchmark collections).

Scaling is fitted on the training split only.  With ``normal_label`` set the anomaly
protocol of DAGMM applies: train (and validate) on normal samples only, test on the
held-out normals plus every anomaly; test labels become 1 = anomaly, 0 = normal.
"""

from __future__ import annotations

import csv
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import TensorDataset

from ..config import ConfigError
from .base import BatchRows, TensorDataModule
from .columns import array_columns, as_spec, constant_columns, dominated_columns, select_columns
from .mapped import PASS_ROWS, FileRows, MappedSplit
from .transform import InputTransform

log = logging.getLogger(__name__)
SCALINGS = ("standardize", "minmax", "none")
FORMATS = (".npy", ".npz", ".csv", ".mat")
WHAT_A_FILE_HOLDS = {
    ".npy": "one array of samples x features (np.save)",
    ".npz": "arrays by key, features X (or data.features=KEY) and optional labels y, one row per sample (np.savez)",
    ".mat": "variables X (or data.features=KEY) and optional y, one row per sample (scipy.io.savemat)",
    ".csv": "a header line with the column names, then one row per sample",
}
# data.memory_map=auto maps a .npy file larger than this
MEMORY_MAP_BYTES = 2**30
# on a mapped file the column checks look at this many training rows (a seeded sample)
CHECKED_ROWS = 2**17


class ArrayDataModule(TensorDataModule):
    def __init__(self, path: str, features: str | list[str] | None = None, label: str | None = None,
                 scaling: str = "standardize", normal_label: int | None = None,
                 contamination: float | None = None, targets: str | list[str] | None = None,
                 memory_map: bool | str = "auto", **kwargs):
        super().__init__(**kwargs)
        if scaling not in SCALINGS:
            raise ValueError(f"data.scaling={scaling!r} is not allowed; allowed: {', '.join(SCALINGS)}")
        if memory_map not in (True, False, "auto"):
            raise ValueError(f"data.memory_map={memory_map!r} is not allowed; allowed: true, false, auto")
        # read a .npy file batch by batch through a memory map (mapped.py) instead of loading it
        self.memory_map = memory_map
        self.path, self.features, self.label = Path(path), features, label
        self.scaling, self.normal_label = scaling, normal_label
        # fraction of test energies flagged as anomalies (None: the true anomaly rate)
        self.contamination = contamination
        # regression targets y for objective=mdn: an npz/mat key or csv columns
        self.targets = targets
        # the feature columns as the file names them (csv header names, array column indices)
        self.column_names: list[str | int] = []
        # what the training columns look like (data/constant_columns, ...), for metrics.json
        self.facts: dict[str, float] = {}

    @property
    def has_targets(self) -> bool:
        return self.targets is not None

    @property
    def target_dim(self) -> int:
        return self.tensors("train")[1].shape[1]

    @property
    def anomaly_protocol(self) -> bool:
        return self.normal_label is not None

    # ------------------------------------------------------------------ reading
    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"data.path={str(self.path)!r}"
        if not self.path.is_file():
            raise FileNotFoundError(f"{where} does not exist")
        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"{where}: unknown format {suffix!r}; allowed: {', '.join(FORMATS)}")
        if self.path.stat().st_size == 0:
            raise ConfigError(f"{where} is an empty file (0 bytes); allowed: {WHAT_A_FILE_HOLDS[suffix]}")
        x, y = self._csv() if suffix == ".csv" else self._keyed(suffix)
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: the features are not numeric (dtype {np.asarray(x).dtype}); "
                              "allowed: numbers only (encode text columns first)") from None
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ConfigError(f"{where}: the features have shape {x.shape}; allowed: a 2-D array, samples x "
                              "features (flatten images first: x.reshape(len(x), -1))")
        if len(x) == 0:
            raise ConfigError(f"{where} holds no samples (0 rows); "
                              f"allowed: {WHAT_A_FILE_HOLDS[suffix]}")
        bad = ~np.isfinite(x)
        if bad.any():
            rows, cols = np.nonzero(bad)
            raise ValueError(f"{self.path.name}: {bad.sum()} NaN/inf values, first at rows "
                             f"{rows[:5].tolist()} columns {cols[:5].tolist()}; clean or impute them first")
        if self.has_targets:
            y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
            if not np.isfinite(y).all():
                raise ValueError(f"{self.path.name}: {(~np.isfinite(y)).sum()} NaN/inf target values")
            return torch.as_tensor(x), torch.as_tensor(y)
        labels = np.full(len(x), -1) if y is None else np.asarray(y).reshape(-1).astype(np.int64)
        return torch.as_tensor(x), torch.as_tensor(labels)

    def _read_arrays(self, suffix: str, mmap_mode: str | None = None) -> dict[str, np.ndarray]:
        """The file's arrays by key ('' for the one array of a .npy, memory-mapped with ``mmap_mode``)."""
        where = f"data.path={str(self.path)!r}"
        # numpy reads a file without its header as a pickle, and says so: say what it is not
        if suffix == ".npz" and not zipfile.is_zipfile(self.path):
            raise ConfigError(f"{where} is not a .npz file (not a zip archive); allowed: {WHAT_A_FILE_HOLDS[suffix]}")
        if suffix == ".npy" and _head(self.path, 6) != b"\x93NUMPY":
            raise ConfigError(f"{where} is not a .npy file (no NUMPY header); allowed: {WHAT_A_FILE_HOLDS[suffix]}")
        try:
            if suffix == ".npy":
                return {"": np.load(self.path, mmap_mode=mmap_mode)}
            if suffix == ".mat":
                from scipy.io import loadmat

                return {k: v for k, v in loadmat(self.path).items() if not k.startswith("__")}
            with np.load(self.path) as archive:
                return dict(archive)
        except Exception as err:  # numpy, zipfile and scipy raise many kinds for a damaged file
            raise ConfigError(f"{where} is not a readable {suffix} file "
                              f"({type(err).__name__}: {' '.join(str(err).split())}); "
                              f"allowed: {WHAT_A_FILE_HOLDS[suffix]}") from None

    def _keyed(self, suffix: str):
        arrays = self._read_arrays(suffix)
        if not arrays:
            raise ConfigError(f"data.path={str(self.path)!r} holds no arrays; allowed: {WHAT_A_FILE_HOLDS[suffix]}")
        role, features, label = self._specs(suffix)
        x, y, self.column_names = select_columns(arrays, features, label, role, self.path.name)
        return x, y

    def _specs(self, suffix: str):
        """(the label's role, 'label' or 'targets'; the features' and its column specs); a .npy
        holds one array, so only column indices pick from it."""
        role, label = ("targets", self.targets) if self.targets is not None else ("label", self.label)
        features, label = as_spec(self.features, "data.features"), as_spec(label, f"data.{role}")
        if suffix == ".npy":
            for key, spec in (("features", features), (role, label)):
                if isinstance(spec, str):
                    raise ConfigError(f"data.{key}={spec!r} names an array, and a .npy holds one; allowed: "
                                      f"column indices (e.g. data.{key}=-1), or a .npz, .mat or .csv file")
        return role, features, label

    def _csv(self):
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]  # blank lines (a trailing one, say) hold no sample
        if not rows:
            raise ConfigError(f"data.path={str(self.path)!r} has no header line; allowed: {WHAT_A_FILE_HOLDS['.csv']}")
        header, body = rows[0], rows[1:]
        ragged = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
        if ragged is not None:
            raise ConfigError(f"row {ragged + 2} of {self.path.name} has {len(body[ragged])} fields and the "
                              f"header {len(header)}; allowed: one field per column in every row")
        target_cols = [self.targets] if isinstance(self.targets, str) else list(self.targets or [])
        wanted = self.features or [c for c in header if c != self.label and c not in target_cols]
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        for col in [*wanted, *([self.label] if self.label else []), *target_cols]:
            if col not in header:
                raise KeyError(f"column {col!r} is not in {self.path.name}; columns: {', '.join(header)}")
        index = [header.index(c) for c in wanted]
        self.column_names = wanted
        try:
            x = np.array([[float(r[i]) for i in index] for r in body])
        except ValueError:
            bad = next(c for c, i in zip(wanted, index) if not all(_is_float(r[i]) for r in body))
            raise ValueError(f"column {bad!r} of {self.path.name} is not numeric; drop it with "
                             "data.features=[...] or encode it first") from None
        if target_cols:
            return x, [[float(r[header.index(c)]) for c in target_cols] for r in body]
        y = None if self.label is None else [float(r[header.index(self.label)]) for r in body]
        return x, y

    # ------------------------------------------------------------------ splits
    def make_splits(self) -> dict[str, TensorDataset]:
        if self._mapped():
            return self._mapped_splits()
        x, y = self.load()
        parts, y = self._partition(y)
        self.facts = self._check_columns(x[parts["train"]].numpy())
        offset, scale = self._fit_scaling(x[parts["train"]])
        self.offset, self.scale = offset, scale
        # each split gathered once and scaled in place (the same float64 arithmetic), then float32
        return {name: TensorDataset(x[idx].sub_(offset).div_(scale).float(), y[idx]) for name, idx in parts.items()}

    def _partition(self, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The splits' sample indices, and the labels (1 = anomaly under the anomaly protocol)."""
        if self.anomaly_protocol:
            if int(y.min()) < 0:
                raise ValueError("data.normal_label needs labels: set data.label")
            values = sorted({float(v) for v in y.unique().tolist()})
            shown = ", ".join(f"{v:g}" for v in values[:10]) + (", ..." if len(values) > 10 else "")
            if isinstance(self.normal_label, bool) or not isinstance(self.normal_label, (int, float)) \
                    or float(self.normal_label) not in values:
                raise ValueError(f"data.normal_label={self.normal_label!r} is not a label of "
                                 f"data.label={self.label!r}; allowed: one of {shown}")
            normal = (y == self.normal_label).nonzero().flatten()
            parts = {name: normal[idx] for name, idx in self.split_indices(len(normal)).items()}
            parts["test"] = torch.cat([parts["test"], (y != self.normal_label).nonzero().flatten()])
            y = (y != self.normal_label).long()
            self.anomaly_rate = float(y.double().mean())  # of the whole file
        else:
            parts = self.split_indices(len(y))
        return parts, y

    # ------------------------------------------------------------------ memory-mapped .npy
    def _mapped(self) -> bool:
        if not self.path.is_file():
            return False  # load() says so
        if self.path.suffix.lower() != ".npy":
            if self.memory_map is True:
                raise ConfigError(f"data.memory_map=true reads a .npy file; data.path={str(self.path)!r} is not one; "
                                  "allowed: a .npy file (np.save), or data.memory_map=false")
            return False
        return self.memory_map is True or (self.memory_map == "auto" and self.path.stat().st_size > MEMORY_MAP_BYTES)

    def _mapped_splits(self) -> dict[str, BatchRows]:
        """The splits of a .npy file as memory-mapped rows: one pass over the file checks it and
        reads the labels, one over the training rows fits the scaling; nothing else is read
        until a batch asks for it."""
        where = f"data.path={str(self.path)!r}"
        array = self._read_arrays(".npy", mmap_mode="r")[""]
        if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.number) or len(array) == 0:
            raise ConfigError(f"{where} holds an array of shape {array.shape} and dtype {array.dtype}; allowed (with "
                              "data.memory_map): a non-empty 1-D or 2-D numeric array, samples x features")
        array = array.reshape(-1, 1) if array.ndim == 1 else array
        role, features, label = self._specs(".npy")
        columns, label_cols = array_columns(array, features, label, role, "", self.path.name)
        file = FileRows(array)
        columns = list(range(array.shape[1])) if columns is None else columns
        self.column_names = columns
        y = self._checked_labels(file, columns, label_cols)
        parts, y = self._partition(y)
        train_rows = np.sort(parts["train"].numpy())
        self.offset, self.scale = self._fit_scaling_in_passes(file, columns, train_rows)
        sample = np.sort(np.random.default_rng(self.split_seed).permutation(train_rows)[:CHECKED_ROWS])
        self.facts = self._check_columns(np.concatenate(list(file.passes(columns, sample))))
        return {name: BatchRows(MappedSplit(file, idx.numpy(), columns, self.offset, self.scale), y[idx])
                for name, idx in parts.items()}

    def _checked_labels(self, file: FileRows, columns: list[int], label_cols: list[int] | None) -> torch.Tensor:
        """A pass over the file: its feature values must be finite; the labels (or targets) it holds."""
        bad, first, labels = 0, [], []
        for start, block in zip(range(0, len(file.array), PASS_ROWS), file.passes()):
            finite = np.isfinite(block[:, columns])
            if not finite.all():
                rows, cols = np.nonzero(~finite)
                bad += int((~finite).sum())
                first += [(start + int(r), columns[c]) for r, c in zip(rows[:5], cols[:5])][: 5 - len(first)]
            if label_cols is not None:
                labels.append(block[:, label_cols])
        if bad:
            raise ValueError(f"{self.path.name}: {bad} NaN/inf values, first at rows {[r for r, _ in first]} "
                             f"columns {[c for _, c in first]}; clean or impute them first")
        n = len(file.array)
        if self.has_targets:
            y = np.concatenate(labels).reshape(n, -1)
            if not np.isfinite(y).all():
                raise ValueError(f"{self.path.name}: {(~np.isfinite(y)).sum()} NaN/inf target values")
            return torch.as_tensor(y)
        return torch.full((n,), -1) if not labels else torch.as_tensor(np.concatenate(labels).reshape(-1).astype(np.int64))

    def _fit_scaling_in_passes(self, file: FileRows, columns: list[int], rows: np.ndarray):
        """``_fit_scaling`` of the training rows, read from the file: two passes for the
        standard deviation (sum of squared deviations from the mean, as torch computes it)."""
        d = len(columns)
        if self.scaling == "none":
            return torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        if self.scaling == "minmax":
            ranges = [(b.min(0), b.max(0)) for b in file.passes(columns, rows)]
            low, high = np.min([lo for lo, _ in ranges], axis=0), np.max([hi for _, hi in ranges], axis=0)
            offset, scale = torch.as_tensor(low), torch.as_tensor(high - low)
        else:
            mean = sum(b.sum(0) for b in file.passes(columns, rows)) / len(rows)
            squares = sum(((b - mean) ** 2).sum(0) for b in file.passes(columns, rows))
            offset, scale = torch.as_tensor(mean), torch.as_tensor(np.sqrt(squares / (len(rows) - 1)))
        return offset, torch.where(scale > 0, scale, torch.ones_like(scale))

    def input_transform(self) -> InputTransform:
        """The file's feature columns -> the model's inputs, with the training split's scaling."""
        self.setup()
        return InputTransform(self.input_shape, self.offset, self.scale, None, list(self.column_names))

    def _check_columns(self, x_train: np.ndarray) -> dict[str, float]:
        """Warns of training columns (N, D) that break a Gaussian fit, naming them and the
        remedy; returns their counts.  Said, not fixed: the user decides what to drop."""
        constant = constant_columns(x_train)
        extreme = [c for c in dominated_columns(x_train) if c not in constant]
        names = self.column_names or list(range(x_train.shape[1]))
        width = x_train.shape[1]
        if constant:
            _warn("data: %d of %d feature columns are constant on the training split (columns %s): they carry "
                  "no information and make every covariance singular along them (held up by model.reg_covar "
                  "or objective.min_scale alone, which inflates the likelihood); drop them%s",
                  len(constant), width, _listed(names, constant), _keep_hint(names, constant))
        if extreme:
            peaks = ", ".join(f"{float(np.abs(x_train[:, c]).max()):.3g}" for c in extreme)
            _warn("data: %d of %d feature columns are dominated by one extreme value (columns %s; largest "
                  "|value| %s): after scaling all their other values sit at nearly one point, and a component "
                  "collapses onto the outlier; drop or clip them, or transform them (e.g. log)%s",
                  len(extreme), width, _listed(names, extreme), peaks, _keep_hint(names, extreme))
        return {"data/constant_columns": float(len(constant)), "data/extreme_columns": float(len(extreme))}

    def _fit_scaling(self, x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scaling == "standardize":
            offset, scale = x_train.mean(0), x_train.std(0)
        elif self.scaling == "minmax":
            offset, scale = x_train.min(0).values, x_train.max(0).values - x_train.min(0).values
        else:
            return torch.zeros(x_train.shape[1]), torch.ones(x_train.shape[1])
        return offset, torch.where(scale > 0, scale, torch.ones_like(scale))  # constant columns


@rank_zero_only
def _warn(message: str, *args) -> None:
    log.warning(message, *args)  # once per job, not once per DDP process


def _listed(names: list, columns: list[int]) -> str:
    return ", ".join(repr(names[c]) if isinstance(names[c], str) else str(names[c]) for c in columns)


def _keep_hint(names: list, drop: list[int]) -> str:
    """' (data.features=[...])' keeping the other columns, when that list is short enough to type."""
    keep = [names[c] for c in range(len(names)) if c not in drop]
    if not keep or len(keep) > 40:
        return " (data.features=[...])"
    return f" (data.features=[{','.join(str(k) for k in keep)}])"


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
