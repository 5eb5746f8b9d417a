"""Picking features and labels out of the arrays of a ``.npz/.mat/.npy`` file, and what is
wrong with a feature column (constant, or dominated by one extreme value).

Public benchmark files often hold one 2-D array with the label as a column, so
``data.label``, ``data.targets`` and ``data.features`` take column indices of one array
as well as names of arrays: ``data.features=data data.label=-1`` is array ``data``
without its last column, labelled by that column.
"""

from __future__ import annotations

import numpy as np
from omegaconf import ListConfig

from ..config import ConfigError

# a key of the file, a column index, or a list of column indices
Spec = str | int | list[int] | None


def as_spec(value, key: str) -> Spec:
    """A Hydra value (ListConfig included) as a key, an index or a list of indices; ``key``
    (e.g. 'data.label') names it in the error.  Labels are one column; targets may be several."""
    if value is None or isinstance(value, str) or _is_index(value):
        return value
    if key != "data.label" and isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    several = "" if key == "data.label" else ", or a list of column indices"
    raise ConfigError(f"{key}={value!r} is not allowed; allowed: a key of the file, a column index{several}")


def select_columns(arrays: dict[str, np.ndarray], features: Spec, label: Spec, label_role: str,
                   file: str) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """(features (N, D), labels or targets (N, ...) or None, the D feature columns' indices in
    their array).

    ``arrays`` maps the file's keys to arrays (a ``.npy``: one entry under the key '');
    ``label_role`` is 'label' or 'targets', the key the user set ``label`` with."""
    source_key = _source_key(arrays, features, label, label_role, file)
    source = arrays.get(source_key)
    feature_cols, label_cols = array_columns(source, features, label, label_role, source_key, file)
    if isinstance(label, str):
        y = arrays[label]
    elif label_cols is not None:
        y = source[:, label_cols[0]] if _is_index(label) else source[:, label_cols]
    else:
        y = arrays["y"] if "y" in arrays and features is None else None
    x = source if feature_cols is None else source[:, feature_cols]
    names = feature_cols if feature_cols is not None else list(range(x.shape[1] if x.ndim == 2 else 1))
    if y is not None and len(y) != len(x):
        raise ConfigError(f"data.{label_role}={label!r} has {len(y)} rows and the features {len(x)} "
                          f"({_name(source_key, file)}); allowed: one {label_role} row per sample")
    return x, y, names


def array_columns(source: np.ndarray, features: Spec, label: Spec, label_role: str, source_key: str,
                  file: str) -> tuple[list[int] | None, list[int] | None]:
    """(the feature columns, None for all; the label's or targets' columns, None for none) of
    ``source``, the array ``source_key`` of ``file``, checked."""
    label_cols = _indices(label, f"data.{label_role}", source, source_key, file)
    feature_cols = _indices(features, "data.features", source, source_key, file)
    if feature_cols is None:
        feature_cols = None if label_cols is None else [c for c in range(source.shape[1]) if c not in label_cols]
    elif label_cols is not None and set(feature_cols) & set(label_cols):
        both = sorted(set(feature_cols) & set(label_cols))
        raise ConfigError(f"data.features={features} and data.{label_role}={label} share columns {both}; "
                          f"allowed: columns of {_name(source_key, file)} that are not the {label_role}")
    width = len(feature_cols) if feature_cols is not None else source.shape[1] if source.ndim == 2 else 1
    if source.ndim == 2 and width == 0:
        raise ConfigError(f"data.{label_role}={label} leaves no feature columns in {_name(source_key, file)} "
                          f"(shape {source.shape}); allowed: an array with at least one more column")
    return feature_cols, label_cols


def _source_key(arrays: dict[str, np.ndarray], features: Spec, label: Spec, label_role: str, file: str) -> str:
    """The array the features (and any label given as a column index) come from."""
    keys = ", ".join(sorted(arrays))
    for role, key in (("features", features), (label_role, label)):
        if isinstance(key, str) and key not in arrays:
            raise ConfigError(f"data.{role}={key!r} is not a key of {file}; keys: {keys}")
    if isinstance(features, str):
        return features
    for key in ("X", "x", ""):  # '': the one array of a .npy
        if key in arrays:
            return key
    raise ConfigError(f"{file} has no key 'X': set data.features to one of {keys}")


def _indices(spec: Spec, key: str, source: np.ndarray, source_key: str, file: str) -> list[int] | None:
    """Column indices of ``spec`` (an index or a list of them), checked and made non-negative."""
    if spec is None or isinstance(spec, str):
        return None
    wanted = [spec] if _is_index(spec) else spec
    if source.ndim != 2:
        raise ConfigError(f"{key}={spec} picks columns, and {_name(source_key, file)} has shape "
                          f"{source.shape}; allowed: column indices of a 2-D array, or a key of {file}")
    n = source.shape[1]
    bad = [c for c in wanted if not _is_index(c) or not -n <= c < n]
    if bad or not wanted:
        raise ConfigError(f"{key}={spec} is not a column of {_name(source_key, file)} (shape {source.shape}); "
                          f"allowed: column indices in {-n}..{n - 1}")
    columns = [c % n for c in wanted]
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{key}={spec} names a column twice; allowed: distinct columns in {-n}..{n - 1}")
    return columns


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _name(key: str, file: str) -> str:
    return f"array {key!r} of {file}" if key else f"the array in {file}"


# --------------------------------------------------------------------------- column checks

# one value this many standard deviations (of the other values) away from the others' mean
# dominates its column: after standardising, all the others sit at nearly one point.  Gaussian
# samples stay within about 6, a heavy-tailed column (1e5 log-normal values, sigma 2) reaches
# a few hundred: warned of only far beyond that
EXTREME_SIGMAS = 1000.0


def constant_columns(x: np.ndarray) -> list[int]:
    """Columns of x (N, D) with one value only."""
    return np.nonzero((x == x[:1]).all(0))[0].tolist() if len(x) else []


def dominated_columns(x: np.ndarray) -> list[int]:
    """Columns of x (N, D) whose value farthest from the median lies more than
    ``EXTREME_SIGMAS`` standard deviations of the other values from their mean (e.g. a 1e300
    among values near 1).  Each column is divided by its largest magnitude first, so
    1e300**2 does not overflow."""
    n = len(x)
    if n < 3:
        return []
    peak = np.abs(x).max(0)
    scaled = x / np.where(peak > 0, peak, 1.0)
    far = np.abs(scaled - np.median(scaled, 0)).argmax(0)
    outlier = scaled[far, np.arange(x.shape[1])]
    rest_mean = (scaled.sum(0) - outlier) / (n - 1)
    rest_var = np.maximum(((scaled - rest_mean) ** 2).sum(0) - (outlier - rest_mean) ** 2, 0.0) / (n - 2)
    gap = np.abs(outlier - rest_mean)
    return np.nonzero((gap > EXTREME_SIGMAS * np.sqrt(rest_var)) & (gap > 0))[0].tolist()
