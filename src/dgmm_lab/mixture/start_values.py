"""EM start values from a file (``model.init_from``): read, check, convert to precision factors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .density import covariance_shape, precision_cholesky_from_covariance, precision_cholesky_from_precision

KEYS = ("weights", "means", "precisions", "covariances")


def load_start_values(path: str, k: int, d: int, covariance_type: str) -> dict[str, Tensor]:
    """Start values from a ``.npz`` or ``.pt`` file with any of ``weights`` (K,), ``means``
    (K, D) and ``precisions`` or ``covariances`` in scikit-learn's shapes for the covariance
    type (full (K, D, D), tied (D, D), diag (K, D), spherical (K,)), in feature space
    (after the backbone).  E.g. ``np.savez(f, weights=gm.weights_, means=gm.means_,
    precisions=gm.precisions_)`` from a fitted scikit-learn model.

    Returns float64 tensors keyed ``weights``, ``means``, ``precisions_cholesky`` (those the
    file gives).  Raises ValueError naming the file, what is wrong and what is allowed."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model.init_from={path!r}: no such file")
    raw = dict(np.load(file)) if file.suffix == ".npz" else torch.load(file, map_location="cpu")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown or not raw or ("precisions" in raw and "covariances" in raw):
        raise ValueError(f"model.init_from={path!r} holds {sorted(raw)}; allowed: any of weights, means, "
                         "and precisions or covariances")
    cov_shape = covariance_shape(k, d, covariance_type)
    shapes = {"weights": (k,), "means": (k, d), "precisions": cov_shape, "covariances": cov_shape}
    values = {}
    for name, value in raw.items():
        value = torch.as_tensor(np.asarray(value), dtype=torch.float64)
        if tuple(value.shape) != shapes[name] or not torch.isfinite(value).all():
            raise ValueError(f"model.init_from={path!r}: {name} has shape {tuple(value.shape)}"
                             f"{'' if torch.isfinite(value).all() else ' and non-finite values'}; "
                             f"allowed: finite values of shape {shapes[name]} (k={k}, {d} features, "
                             f"covariance={covariance_type})")
        values[name] = value
    if "weights" in values and (bool((values["weights"] <= 0).any()) or abs(float(values["weights"].sum()) - 1) > 1e-6):
        raise ValueError(f"model.init_from={path!r}: weights must be positive and sum to 1")
    try:
        if "precisions" in values:
            values["precisions_cholesky"] = precision_cholesky_from_precision(values.pop("precisions"), covariance_type)
        elif "covariances" in values:
            values["precisions_cholesky"] = precision_cholesky_from_covariance(values.pop("covariances"), covariance_type)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"model.init_from={path!r}: {err}") from None
    factor = values.get("precisions_cholesky")
    if factor is not None:
        # a zero precision passes the square root and the Cholesky factor, and scores -inf
        diagonal = torch.diagonal(factor, dim1=-2, dim2=-1) if covariance_type in ("full", "tied") else factor
        if not (torch.isfinite(factor).all() and (diagonal > 0).all()):
            raise ValueError(f"model.init_from={path!r}: precisions must be positive")
    return values
