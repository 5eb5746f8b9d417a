"""Raw inputs -> what a model was trained on, with the values fitted on its training split.

A data module describes its preprocessing as an :class:`InputTransform` (grey levels to
[0, 1], standardisation or min-max per feature, the sample shape); the checkpoint carries it,
so a trained model applies exactly that to new data and never refits it.  Shapes: raw inputs
(N, ...) with prod(...) = prod(input_shape) values per row; outputs (N, *input_shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class InputTransform:
    input_shape: tuple[int, ...]
    offset: Tensor | float = 0.0        # subtracted after the pixel scaling (per feature or one value)
    scale: Tensor | float = 1.0         # then divided by
    pixel_scale: float | None = None    # grey levels -> [0, 1] (MNIST: 1/255); None: not images
    columns: list = field(default_factory=list)  # feature names (CSV header) or indices, [] if unnamed

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    def __call__(self, raw) -> Tensor:
        """Raw rows (N, ...) -> model inputs (N, *input_shape), float32."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float64))
        if x.ndim == 1 and self.n_features > 1 and len(x) == self.n_features:
            x = x.unsqueeze(0)  # one row given as a vector
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("the input has no rows")
        flat = x.reshape(x.shape[0], -1)
        self.check_count("the input", flat.shape[1])
        if not torch.isfinite(flat).all():
            bad = (~torch.isfinite(flat)).any(1).nonzero().flatten()
            raise ValueError(f"the input has NaN or inf values in {len(bad)} row(s), first row {int(bad[0])}")
        if self.pixel_scale is not None:
            flat = flat * self.pixel_scale
        flat = (flat - _as_tensor(self.offset)) / _as_tensor(self.scale)
        return flat.float().reshape(x.shape[0], *self.input_shape)

    def check_count(self, where: str, per_row: int) -> None:
        """ValueError naming ``where`` unless rows have this model's number of values."""
        if per_row != self.n_features:
            shape = f" ({' x '.join(map(str, self.input_shape))})" if len(self.input_shape) > 1 else ""
            raise ValueError(f"{where} has {per_row} values per row; the model was trained on {self.n_features}{shape}")

    def invert(self, x: Tensor) -> Tensor:
        """Model inputs (N, *input_shape) -> raw units (N, *input_shape), float64 (samples)."""
        flat = x.double().reshape(x.shape[0], -1) * _as_tensor(self.scale) + _as_tensor(self.offset)
        if self.pixel_scale is not None:
            flat = flat / self.pixel_scale
        return flat.reshape(x.shape)

    def log_det(self) -> float:
        """log |det d transform(x) / dx|: add it to a model's log-density of transformed inputs
        to get the log-density in the raw units (exact densities: EM, objective=nll)."""
        scale = _as_tensor(self.scale).expand(self.n_features)
        pixel = math.log(self.pixel_scale) * self.n_features if self.pixel_scale is not None else 0.0
        return float(pixel - scale.log().sum())

    def state(self) -> dict:
        """Plain containers and tensors only (a checkpoint loads with weights_only=True)."""
        return {"input_shape": list(self.input_shape), "offset": _as_tensor(self.offset),
                "scale": _as_tensor(self.scale), "pixel_scale": self.pixel_scale,
                "columns": [c if isinstance(c, (int, str)) else str(c) for c in self.columns]}

    @classmethod
    def from_state(cls, state: dict) -> "InputTransform":
        return cls(tuple(state["input_shape"]), state["offset"], state["scale"], state["pixel_scale"],
                   list(state["columns"]))


def _as_tensor(value) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64)
