"""Exact negative log-likelihood: log p(x) = log p_mixture(f(x)) + log|det df/dx|.

With a fixed map f (identity, PCA) this is a gradient-trained GMM directly comparable to
EM; with a flow it is FlowGMM-style density estimation.  A non-invertible trainable encoder
is refused: it could shrink all codes together and drive the "likelihood" to infinity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..mixture import em
from ..mixture.density import MixtureDensity
from ..nets.feature_extractor import FeatureExtractor
from ..nets.parameter_generator import GlobalParameters
from .base import Objective


class NLLObjective(Objective):
    """-log p(x) per sample, exact: the mixture over f(x) plus the backbone's log-determinant.

    backbone: identity, pca (fixed maps, log-det 0) or flow (invertible, trained);
    n_components K, covariance_type of the density core; min_scale floors the component
    standard deviations; n_init k-means starts on the features (the most likely is kept).
    """

    name = "nll"
    backbones = ("identity", "pca", "flow")
    offers = frozenset({"cluster", "density", "sample", "embed", "decode"})
    exact_input_density = True

    def __init__(self, backbone: FeatureExtractor, n_components: int, covariance_type: str,
                 min_scale: float = 1e-3, n_init: int = 1):
        super().__init__()
        self.backbone, self.n_init = backbone, n_init
        self.parameter_generator = GlobalParameters(n_components, backbone.out_dim,
                                                    covariance_type, min_scale)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if getattr(self.backbone, "invertible", False):
            return self.backbone.forward_with_log_det(x)
        z = self.backbone(x)
        return z, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def mixture(self) -> MixtureDensity:
        return self.parameter_generator()

    def loss(self, x: Tensor, reduce=None, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        nll = -self.log_prob(x).mean()
        return nll, {"nll": nll}

    def log_prob(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        z, log_det = self.features(x)
        return self.mixture().log_prob(z) + log_det

    @torch.no_grad()
    def initialize(self, x: Tensor, generator: torch.Generator) -> None:
        """k-means responsibilities on the features -> one M-step -> start values; the
        restart with the highest likelihood is kept."""
        z = self.features(x)[0].double()
        cov_type = self.parameter_generator.covariance_type
        k = self.parameter_generator.means.shape[0]
        r = em.initial_mixture(z, k, cov_type, "kmeans", generator, reg_covar=1e-6, n_init=self.n_init)
        self.parameter_generator.set_from(r.weights, r.means, r.covariances)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.backbone.decode(z)
