"""An invertible feature extractor: affine coupling layers (RealNVP) returning log|det J|.

With a Gaussian-mixture base density this is FlowGMM-style exact likelihood training:
log p(x) = log p_mixture(f(x)) + log|det df/dx|.

Image data in [0, 1] (``pixel_scale`` = 1/255) are first dequantised and logit-transformed
(``Dequantize``), with that Jacobian included, so the density is one of continuous pixels
and ``bits/dim`` = (nll + D log 256) / (D log 2) is comparable with any other model scored on the
same dequantised pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .feature_extractor import FeatureExtractor


class AffineCoupling(nn.Module):
    """y = x on the masked half; y = x * exp(s(x_m)) + t(x_m) on the other half."""

    def __init__(self, dim: int, mask: Tensor, hidden: int):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)  # start as the identity map
        nn.init.zeros_(self.net[-1].bias)
        self.log_scale_limit = nn.Parameter(torch.ones(dim))

    def _st(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x_masked).chunk(2, -1)
        s = torch.tanh(s) * self.log_scale_limit  # bounded scales keep training stable
        free = 1 - self.mask
        return s * free, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x * self.mask)
        return x * torch.exp(s) + t, s.sum(-1)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._st(y * self.mask)
        return (y - t) * torch.exp(-s)


class Dequantize(nn.Module):
    """x in [0,1] on a grid of ``pixel_scale`` -> uniform noise within the bin ->
    logit(alpha + (1 - 2 alpha) x); returns the value and its log|det J|."""

    def __init__(self, pixel_scale: float = 1 / 255, alpha: float = 1e-6):
        super().__init__()
        self.levels = round(1 / pixel_scale) + 1
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:
            x = (x * (self.levels - 1) + torch.rand_like(x)) / self.levels
        else:  # deterministic evaluation: the bin centres
            x = (x * (self.levels - 1) + 0.5) / self.levels
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).sum(-1)
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        return ((torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)).clamp(0, 1)


class Flow(FeatureExtractor):
    """Invertible map of the flattened input; ``forward_with_log_det`` gives log|det J|."""

    invertible = True

    def __init__(self, input_shape, n_layers: int = 6, hidden: int = 64,
                 dequantize: bool = False, pixel_scale: float = 1 / 255):
        super().__init__(input_shape)
        d = self.input_dim
        self.out_dim = d
        masks = [(torch.arange(d) + i) % 2 for i in range(n_layers)]
        if d == 1:
            raise ValueError("backbone=flow needs inputs of at least 2 dimensions")
        self.layers = nn.ModuleList(AffineCoupling(d, m.float(), hidden) for m in masks)
        self.dequantize = Dequantize(pixel_scale) if dequantize else None

    def forward_with_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x.flatten(1)
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        if self.dequantize is not None:
            z, ld = self.dequantize(z)
            log_det = log_det + ld
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_log_det(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        if self.dequantize is not None:
            z = self.dequantize.inverse(z)
        return self.unflatten(z)
