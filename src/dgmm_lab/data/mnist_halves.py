"""MNIST image completion for mixture density networks: x is the top half of a digit,
y a PCA code of its bottom half (the PCA fitted on the training split's bottom halves).

Given the top half, the bottom half is ambiguous (the top of a 7 may end as a 9 or a 4),
so p(y | x) is multi-modal; a K-component MDN against the K=1 (single Gaussian) baseline
measures how much of that the mixture captures.  ``decode_target`` maps codes back to
pixels, so sampled codes are shown as completed digits.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ..mixture.covariances import principal_axes
from .mnist import MNISTDataModule

ROWS = 14  # rows 0-13 are the input, rows 14-27 the target


class MNISTHalvesDataModule(MNISTDataModule):
    """Batches are (top half (N, 1, 14, 28), code (N, code_dim)); ``labels(split)`` keeps
    the digit classes for pictures and analysis.  ``whiten`` divides each code coordinate
    by its training standard deviation (the NLL is then in whitened units)."""

    has_targets = True

    def __init__(self, code_dim: int = 32, whiten: bool = False, **kwargs):
        kwargs.update(flatten=False, scaling="unit")  # halves are cut from 28x28 images in [0, 1]
        super().__init__(**kwargs)
        if not 1 <= code_dim <= ROWS * 28:
            raise ValueError(f"data.code_dim={code_dim} is not in 1..{ROWS * 28}")
        self.code_dim, self.whiten = code_dim, whiten
        self.image_shape = (1, ROWS, 28)
        self._labels: dict[str, Tensor] = {}

    def make_splits(self) -> dict[str, TensorDataset]:
        images = super().make_splits()
        bottom_train = images["train"].tensors[0][:, :, ROWS:].flatten(1).double()
        self._fit_pca(bottom_train)
        splits = {}
        for name, ds in images.items():
            x, labels = ds.tensors
            self._labels[name] = labels
            splits[name] = TensorDataset(x[:, :, :ROWS].contiguous(), self.encode_target(x[:, :, ROWS:]))
        return splits

    def _fit_pca(self, bottom: Tensor) -> None:
        mean, s, vh = principal_axes(bottom)
        std = s[: self.code_dim] / max(len(bottom) - 1, 1) ** 0.5
        self.code_mean, self.code_basis = mean, vh[: self.code_dim]
        self.code_scale = std if self.whiten else torch.ones_like(std)
        self.explained_variance_ratio = float((s[: self.code_dim] ** 2).sum() / (s ** 2).sum())

    def encode_target(self, bottom: Tensor) -> Tensor:
        """Bottom halves (N, 1, 14, 28) -> codes (N, code_dim), float32."""
        centred = bottom.flatten(1).double() - self.code_mean
        return (centred @ self.code_basis.T / self.code_scale).float()

    def decode_target(self, code: Tensor) -> Tensor:
        """Codes (..., code_dim) -> bottom halves (..., 1, 14, 28) in pixel units."""
        basis = self.code_basis.to(code.device)
        flat = (code.double() * self.code_scale.to(code.device)) @ basis + self.code_mean.to(code.device)
        return flat.float().reshape(*code.shape[:-1], 1, ROWS, 28)

    def describe_inputs(self) -> dict:
        """Also the PCA code of the bottom halves, so a trained model decodes its samples."""
        return {**super().describe_inputs(), "target_code": {
            "mean": self.code_mean, "basis": self.code_basis, "scale": self.code_scale, "rows": ROWS}}

    def labels(self, split: str) -> Tensor:
        self.setup()
        return self._labels[split]

    @property
    def target_dim(self) -> int:
        return self.code_dim
