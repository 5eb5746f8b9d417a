"""Pictures of a mixture: image grids and 2-D scatter plots with covariance ellipses."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: figures go to TensorBoard and PNG files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .mixture.density import MixtureDensity  # noqa: E402


def image_grid(images: Tensor, nrow: int = 10) -> Tensor:
    """(N, C, H, W) -> (C, H', W') in [0, 1], each image scaled on its own."""
    return make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, scale_each=True, padding=2)


def side_by_side(inputs: Tensor, outputs: Tensor) -> Tensor:
    """Inputs on odd rows, their reconstructions below them."""
    n = min(len(inputs), 10)
    pairs = torch.cat([inputs[:n], outputs[:n]])
    return image_grid(pairs, nrow=n)


def completion_grid(top: Tensor, truth: Tensor, completions: Tensor) -> Tensor:
    """One row per input: the true digit, then each completion (top half given, bottom half
    generated, drawn in amber so what the model produced is visible).  top (N, 1, h, W),
    truth (N, 1, H - h, W), completions (N, S, 1, H - h, W) in [0, 1] pixel units ->
    (3, H', W') image."""
    n, s = completions.shape[:2]
    grey = lambda t: t.clamp(0, 1).expand(*t.shape[:-3], 3, *t.shape[-2:])  # noqa: E731
    amber = torch.tensor([1.0, 0.75, 0.3]).view(3, 1, 1)
    real = torch.cat([grey(top), grey(truth)], -2).unsqueeze(1)                     # (N, 1, 3, H, W)
    made = torch.cat([grey(top).unsqueeze(1).expand(n, s, 3, *top.shape[-2:]),
                      completions.clamp(0, 1) * amber], -2)                          # (N, S, 3, H, W)
    tiles = torch.cat([real, made], 1).flatten(0, 1).detach().float().cpu()
    return make_grid(tiles, nrow=s + 1, padding=2, pad_value=0.5)


def ellipse_points(mean: np.ndarray, cov: np.ndarray, n_std: float = 2.0) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * math.pi, 100)
    circle = np.stack([np.cos(t), np.sin(t)])
    return (vecs @ (n_std * np.sqrt(np.maximum(vals, 0))[:, None] * circle)).T + mean


def dense_covariances(mixture: MixtureDensity) -> np.ndarray:
    cov = mixture.covariances.detach().double().cpu()
    k, d = mixture.means.shape
    if mixture.covariance_type == "tied":
        cov = cov.expand(k, d, d)
    elif mixture.covariance_type == "diag":
        cov = torch.diag_embed(cov)
    elif mixture.covariance_type == "spherical":
        cov = cov.view(-1, 1, 1) * torch.eye(d, dtype=cov.dtype)
    return cov.numpy()


def scatter_with_ellipses(x: Tensor, labels: Tensor | None, mixture: MixtureDensity | None,
                          title: str = "") -> plt.Figure:
    """2-D data coloured by label, each component's mean and 2-sigma ellipse on top."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    pts = x.detach().cpu().numpy()
    colours = {} if labels is None else {"c": labels.cpu().numpy(), "cmap": "tab10"}
    ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, **colours)
    components = [] if mixture is None else zip(
        mixture.means.detach().double().cpu().numpy(), dense_covariances(mixture),
        mixture.weights.detach().double().cpu().numpy())
    for mean, cov, w in components:
        ring = ellipse_points(mean[:2], cov[:2, :2])
        ax.plot(ring[:, 0], ring[:, 1], "k-", lw=0.5 + 3 * w)
        ax.plot(*mean[:2], "k+", ms=8)
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    # fixed margins: tight_layout renders the figure once more to measure its labels
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.07, top=0.94)
    return fig
