"""Synthetic data with known structure: a Gaussian mixture, or non-Gaussian shapes
(two moons, concentric rings, a spiral) where a deep feature extractor should help."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import TensorDataModule

SHAPES = ("gmm", "moons", "rings", "spiral")


def gaussian_mixture(n: int, dim: int, n_clusters: int, separation: float,
                     covariance_type: str, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Means drawn at a typical distance ``separation`` (in units of the component scale);
    covariances random SPD (full), random scales (diag, spherical) or one shared (tied)."""
    means = torch.randn(n_clusters, dim, generator=g) * separation / math.sqrt(2)
    labels = torch.randint(n_clusters, (n,), generator=g)
    eps = torch.randn(n, dim, generator=g)
    if covariance_type in ("full", "tied"):
        count = n_clusters if covariance_type == "full" else 1
        a = torch.randn(count, dim, dim, generator=g) / math.sqrt(dim)
        factors = a + torch.eye(dim)  # well-conditioned random linear maps
        factors = factors[labels] if covariance_type == "full" else factors.expand(n, -1, -1)
        noise = (factors @ eps.unsqueeze(-1)).squeeze(-1)
    elif covariance_type == "diag":
        noise = eps * (0.5 + torch.rand(n_clusters, dim, generator=g))[labels]
    else:
        noise = eps * (0.5 + torch.rand(n_clusters, 1, generator=g))[labels]
    return means[labels] + noise, labels


def two_moons(n: int, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(2, (n,), generator=g)
    t = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    x = torch.where(labels.unsqueeze(-1) == 1, lower, x)
    return x + noise * torch.randn(n, 2, generator=g), labels


def rings(n: int, noise: float, g: torch.Generator, n_rings: int = 2) -> tuple[Tensor, Tensor]:
    labels = torch.randint(n_rings, (n,), generator=g)
    t = torch.rand(n, generator=g) * 2 * math.pi
    radius = (labels + 1).float()
    x = radius.unsqueeze(-1) * torch.stack([torch.cos(t), torch.sin(t)], -1)
    return x + noise * torch.randn(n, 2, generator=g), labels


def spiral(n: int, noise: float, g: torch.Generator, n_arms: int = 2) -> tuple[Tensor, Tensor]:
    labels = torch.randint(n_arms, (n,), generator=g)
    t = 0.5 + 2.5 * torch.rand(n, generator=g)  # radius and angle grow together
    angle = 1.6 * t + labels * (2 * math.pi / n_arms)
    x = t.unsqueeze(-1) * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return x + noise * torch.randn(n, 2, generator=g), labels


class SyntheticDataModule(TensorDataModule):
    """Samples with ground-truth labels, drawn once from ``seed`` and split train/val/test."""

    def __init__(self, shape: str = "gmm", n_samples: int = 3000, dim: int = 2,
                 n_clusters: int = 3, separation: float = 6.0, covariance_type: str = "full",
                 noise: float = 0.08, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if shape not in SHAPES:
            raise ValueError(f"data.shape={shape!r} is not allowed; allowed: {', '.join(SHAPES)}")
        self.shape, self.n_samples, self.dim = shape, n_samples, dim
        self.n_clusters, self.separation = n_clusters, separation
        self.covariance_type, self.noise, self.seed = covariance_type, noise, seed

    def load(self) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        if self.shape == "gmm":
            return gaussian_mixture(self.n_samples, self.dim, self.n_clusters, self.separation,
                                    self.covariance_type, g)
        make = {"moons": two_moons, "rings": rings, "spiral": spiral}[self.shape]
        return make(self.n_samples, self.noise, g)
