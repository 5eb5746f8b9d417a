"""Conditional-density problems with known structure: (x, y) pairs where y given x is
multi-modal, for mixture density networks (``objective=mdn``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import TensorDataModule

SHAPES = ("bishop", "bishop2d")


def bishop_inverse(n: int, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Bishop (1994): y ~ U(0, 1), x = y + 0.3 sin(2 pi y) + noise; predict y from x.
    For x near 0.5 there are three branches of y."""
    y = torch.rand(n, 1, generator=g)
    x = y + 0.3 * torch.sin(2 * math.pi * y) + noise * (2 * torch.rand(n, 1, generator=g) - 1)
    return x, y


def bishop_2d(n: int, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two correlated targets per input: the inverse problem's branch and a second
    coordinate that depends on the branch (multi-modal, correlated within each mode)."""
    x, y1 = bishop_inverse(n, noise, g)
    y2 = torch.cos(3 * math.pi * y1) + 0.5 * y1 + 0.05 * torch.randn(n, 1, generator=g)
    return x, torch.cat([y1, y2], 1)


class RegressionDataModule(TensorDataModule):
    """Batches are (x, y) with float targets y (N, target_dim)."""

    has_targets = True

    def __init__(self, shape: str = "bishop", n_samples: int = 4000, noise: float = 0.1,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if shape not in SHAPES:
            raise ValueError(f"data.shape={shape!r} is not allowed; allowed: {', '.join(SHAPES)}")
        self.shape, self.n_samples, self.noise, self.seed = shape, n_samples, noise, seed

    def load(self) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        make = bishop_inverse if self.shape == "bishop" else bishop_2d
        return make(self.n_samples, self.noise, g)

    @property
    def target_dim(self) -> int:
        return self.tensors("train")[1].shape[1]
