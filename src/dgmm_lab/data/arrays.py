"""The user's own data: ``.npy``, ``.npz``, ``.csv`` or MATLAB ``.mat`` (keys ``X``/``y`` as
in the common anomaly-detection benchmark collections).

Scaling is fitted on the training split only.  With ``normal_label`` set the anomaly
protocol of DAGMM applies: train (and validate) on normal samples only, test on the
held-out normals plus every anomaly; test labels become 1 = anomaly, 0 = normal.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import TensorDataModule

SCALINGS = ("standardize", "minmax", "none")
FORMATS = (".npy", ".npz", ".csv", ".mat")


class ArrayDataModule(TensorDataModule):
    def __init__(self, path: str, features: str | list[str] | None = None, label: str | None = None,
                 scaling: str = "standardize", normal_label: int | None = None,
                 contamination: float | None = None, targets: str | list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if scaling not in SCALINGS:
            raise ValueError(f"data.scaling={scaling!r} is not one of {', '.join(SCALINGS)}")
        self.path, self.features, self.label = Path(path), features, label
        self.scaling, self.normal_label = scaling, normal_label
        # fraction of test energies flagged as anomalies (None: the true anomaly rate)
        self.contamination = contamination
        # regression targets y for objective=mdn: an npz/mat key or csv columns
        self.targets = targets

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
        if not self.path.is_file():
            raise FileNotFoundError(f"data.path={str(self.path)!r} does not exist")
        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"data.path={str(self.path)!r}: unknown format {suffix!r}; allowed: {', '.join(FORMATS)}")
        x, y = {".npy": self._npy, ".npz": self._keyed, ".mat": self._keyed, ".csv": self._csv}[suffix]()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
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

    def _npy(self):
        if self.label is not None:
            raise ValueError("data.label needs a .npz, .mat or .csv file (a .npy holds one array)")
        return np.load(self.path), None

    def _keyed(self):
        if self.path.suffix.lower() == ".mat":
            from scipy.io import loadmat

            arrays = {k: v for k, v in loadmat(self.path).items() if not k.startswith("__")}
        else:
            arrays = dict(np.load(self.path))
        feature_key = self.features or ("X" if "X" in arrays else "x" if "x" in arrays else None)
        label_key = self.targets or self.label or ("y" if "y" in arrays and self.features is None else None)
        for role, key in (("features", feature_key), ("targets" if self.targets else "label", label_key)):
            if key is not None and key not in arrays:
                raise KeyError(f"data.{role}={key!r} is not a key of {self.path.name}; keys: {', '.join(sorted(arrays))}")
        if feature_key is None:
            raise KeyError(f"{self.path.name} has no key 'X': set data.features to one of {', '.join(sorted(arrays))}")
        return arrays[feature_key], None if label_key is None else arrays[label_key]

    def _csv(self):
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        target_cols = [self.targets] if isinstance(self.targets, str) else list(self.targets or [])
        wanted = self.features or [c for c in header if c != self.label and c not in target_cols]
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        for col in [*wanted, *([self.label] if self.label else []), *target_cols]:
            if col not in header:
                raise KeyError(f"column {col!r} is not in {self.path.name}; columns: {', '.join(header)}")
        index = [header.index(c) for c in wanted]
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
        x, y = self.load()
        g = torch.Generator().manual_seed(self.split_seed)
        if self.anomaly_protocol:
            if int(y.min()) < 0:
                raise ValueError("data.normal_label needs labels: set data.label")
            normal = (y == self.normal_label).nonzero().flatten()
            normal = normal[torch.randperm(len(normal), generator=g)]
            n_test, n_val = int(len(normal) * self.test_fraction), int(len(normal) * self.val_fraction)
            anomalies = (y != self.normal_label).nonzero().flatten()
            parts = {"test": torch.cat([normal[:n_test], anomalies]), "val": normal[n_test:n_test + n_val],
                     "train": normal[n_test + n_val:]}
            y = (y != self.normal_label).long()
        else:
            order = torch.randperm(len(x), generator=g)
            n_test, n_val = int(len(x) * self.test_fraction), int(len(x) * self.val_fraction)
            parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        offset, scale = self._fit_scaling(x[parts["train"]])
        return {name: TensorDataset(((x[idx] - offset) / scale).float(), y[idx]) for name, idx in parts.items()}

    def _fit_scaling(self, x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scaling == "standardize":
            offset, scale = x_train.mean(0), x_train.std(0)
        elif self.scaling == "minmax":
            offset, scale = x_train.min(0).values, x_train.max(0).values - x_train.min(0).values
        else:
            return torch.zeros(x_train.shape[1]), torch.ones(x_train.shape[1])
        return offset, torch.where(scale > 0, scale, torch.ones_like(scale))  # constant columns


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
