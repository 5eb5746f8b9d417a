"""Feature extractors (the ``backbone`` config group): input (N, *input_shape) -> z (N, out_dim).

Autoencoding extractors own a matching ``decode`` (z -> input shape), used for DAGMM's
reconstruction term, VaDE's likelihood p(x|z) and for showing means and samples as images.
``identity`` and ``pca`` are linear and exact; ``pca`` is fitted on training data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..mixture.covariances import principal_axes


class FeatureExtractor(nn.Module):
    needs_fit = False

    def __init__(self, input_shape):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.input_dim = math.prod(self.input_shape)

    def unflatten(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *self.input_shape)


class Identity(FeatureExtractor):
    """Raw features, flattened."""

    def __init__(self, input_shape):
        super().__init__(input_shape)
        self.out_dim = self.input_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        return self.unflatten(z)


class PCA(FeatureExtractor):
    """Projection onto the leading principal components of the training data."""

    needs_fit = True

    def __init__(self, input_shape, n_components: int = 50, whiten: bool = False):
        super().__init__(input_shape)
        self.out_dim = min(n_components, self.input_dim)
        self.whiten = whiten
        self.register_buffer("mean", torch.zeros(self.input_dim))
        self.register_buffer("components", torch.eye(self.input_dim)[: self.out_dim])
        self.register_buffer("scale", torch.ones(self.out_dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> "PCA":
        x = x.flatten(1)
        mean, s, vh = principal_axes(x)
        self.mean.copy_(mean)
        self.components.copy_(vh[: self.out_dim])
        if self.whiten:
            self.scale.copy_(s[: self.out_dim] / math.sqrt(max(x.shape[0] - 1, 1)))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1).to(self.mean.dtype) - self.mean) @ self.components.T / self.scale

    def decode(self, z: Tensor) -> Tensor:
        return self.unflatten((z * self.scale) @ self.components + self.mean)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _mlp(sizes: list[int], final_activation: bool = False, activation: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(FeatureExtractor):
    """A trainable encoder ``head(body(x))`` with a decoder.  ``body`` gives the
    penultimate features, so a variational model can add a log-variance head beside
    ``head`` (VaDE's q(z|x))."""

    body: nn.Module
    head: nn.Linear
    decoder: nn.Module

    def prepare(self, x: Tensor) -> Tensor:
        return self.unflatten(x)

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.unflatten(self.decoder(z))


class MLP(Encoder):
    """Fully connected encoder/decoder (VaDE/DEC use hidden=(500, 500, 2000) on MNIST;
    DAGMM's compression network uses activation="tanh")."""

    def __init__(self, input_shape, latent_dim: int = 10, hidden: tuple[int, ...] = (256, 256),
                 activation: str = "relu"):
        super().__init__(input_shape)
        if activation not in ACTIVATIONS:
            raise ValueError(f"backbone.activation={activation!r} is not allowed; allowed: {', '.join(ACTIVATIONS)}")
        self.out_dim = latent_dim
        hidden = list(hidden)
        self.body = _mlp([self.input_dim, *hidden], final_activation=True, activation=activation)
        self.head = nn.Linear(hidden[-1], latent_dim)
        self.decoder = _mlp([latent_dim, *reversed(hidden), self.input_dim], activation=activation)

    def prepare(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _check_28x28(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[1:] != (28, 28):
        raise ValueError(f"backbone={name} expects 28x28 images, got input shape {shape}; "
                         "use backbone=mlp or identity for vectors")


class Conv(Encoder):
    """Small CNN for 1x28x28 images (two stride-2 convolutions) with a mirrored decoder."""

    def __init__(self, input_shape=(1, 28, 28), latent_dim: int = 10, channels: int = 32):
        super().__init__(input_shape)
        _check_28x28("conv", self.input_shape)
        c_in, c = self.input_shape[0], channels
        self.out_dim = latent_dim
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 4, 2, 1), nn.ReLU(),          # 14x14
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),         # 7x7
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 49, latent_dim)
        self.decoder = conv_decoder(c_in, c, latent_dim)


def conv_decoder(c_out: int, c: int, latent_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * c * 49), nn.ReLU(), nn.Unflatten(1, (2 * c, 7, 7)),
        nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(c, c_out, 4, 2, 1),
    )


class ResNet(Encoder):
    """torchvision ResNet-18 for small images: 3x3 stem, no max-pool; conv decoder."""

    def __init__(self, input_shape=(1, 28, 28), latent_dim: int = 10):
        super().__init__(input_shape)
        _check_28x28("resnet", self.input_shape)
        from torchvision.models import resnet18

        net = resnet18()
        net.conv1 = nn.Conv2d(self.input_shape[0], 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.body = net
        self.head = nn.Linear(512, latent_dim)
        self.out_dim = latent_dim
        self.decoder = conv_decoder(self.input_shape[0], 32, latent_dim)
