"""Mixture density network (Bishop 1994): the feature extractor reads x, the parameter
generator produces a Gaussian mixture over the target y, the density core scores y.
Loss = mean conditional negative log-likelihood -log p(y | x), a log-sum-exp."""

from __future__ import annotations

import torch
from torch import Tensor

from ..mixture.density import batched_component_log_prob, sample_mixture
from ..nets.feature_extractor import FeatureExtractor
from ..nets.parameter_generator import ConditionalParameters
from .base import Objective


class MDNObjective(Objective):
    """-log p(y | x) per sample, with a mixture of K Gaussians over y (N, target_dim) for
    every input x; min_scale floors the component standard deviations."""

    name = "mdn"
    backbones = ("mlp", "identity", "pca", "conv", "resnet")
    offers = frozenset({"cluster", "density", "sample", "embed"})
    conditional = True

    def __init__(self, backbone: FeatureExtractor, n_components: int, covariance_type: str,
                 target_dim: int = 1, min_scale: float = 1e-3):
        super().__init__()
        self.backbone, self.covariance_type, self.target_dim = backbone, covariance_type, target_dim
        self.parameter_generator = ConditionalParameters(backbone.out_dim, n_components, target_dim,
                                                         covariance_type, min_scale)

    def conditional_mixture(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.parameter_generator(self.backbone(x))

    def log_prob(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """log p(y | x) per sample (N,)."""
        log_w, means, prec_chol = self.conditional_mixture(x)
        comp = batched_component_log_prob(target.to(means.dtype), means, prec_chol, self.covariance_type)
        return torch.logsumexp(log_w + comp, -1)

    def loss(self, x: Tensor, reduce=None, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if target is None:
            raise ValueError("objective=mdn needs (x, y) batches with float targets y")
        nll = -self.log_prob(x, target).mean()
        return nll, {"nll": nll}

    def cluster(self, x: Tensor) -> Tensor:
        """The most probable component for each input."""
        return self.conditional_mixture(x)[0].argmax(-1)

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of y for each x: (N, n, D)."""
        return sample_mixture(*self.conditional_mixture(x), self.covariance_type, n, generator)[0]

    @torch.no_grad()
    def conditional_mean(self, x: Tensor) -> Tensor:
        log_w, means, _ = self.conditional_mixture(x)
        return (log_w.exp().unsqueeze(-1) * means).sum(1)

    @torch.no_grad()
    def mode(self, x: Tensor) -> Tensor:
        """The mean of the most probable component (an approximation of the mode)."""
        log_w, means, _ = self.conditional_mixture(x)
        return means[torch.arange(len(x)), log_w.argmax(-1)]

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)

