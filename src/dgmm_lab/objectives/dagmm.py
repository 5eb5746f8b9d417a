"""DAGMM (Zong et al., ICLR 2018): a compression network (autoencoder) and an estimation
network (amortised memberships) trained jointly.

z = [code, reconstruction-error features]; gamma = softmax(estimation net(z)); the mixture
is the gamma-weighted moments of the batch (summed over processes); loss = reconstruction +
lambda_energy * mean energy + lambda_cov * sum 1/Sigma_dd. At evaluation the mixture is
estimated over the whole training set with the current networks (``fit_training_set``,
before every validation), not from one batch.

The error features: the paper's relative Euclidean error ||x - x_hat|| / ||x|| and cosine
similarity fit inputs in [0, 1]. On standardised (centred) data ||x|| is itself large for an
anomaly, so the relative error is smaller for anomalies than for normals (AUROC 0.36-0.41
on cardio) and the energy ranks them by chance (0.48-0.68 over seeds). The log absolute
error, log ||x - x_hat||, keeps the signal (the default; the paper's pair is
``experiment=dagmm_paper``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import Tensor

from ..mixture.density import MixtureDensity
from ..nets.feature_extractor import FeatureExtractor
from ..nets.parameter_generator import AmortizedParameters, inverse_covariance_penalty
from .base import Objective

EPS = 1e-8
LOG_EPS = 1e-3  # a perfect reconstruction's log error: finite, 7 nats below a typical one


def _relative_euclidean(flat: Tensor, flat_hat: Tensor) -> Tensor:
    return (flat - flat_hat).norm(dim=1) / (flat.norm(dim=1) + EPS)


def _log_euclidean(flat: Tensor, flat_hat: Tensor) -> Tensor:
    return torch.log((flat - flat_hat).norm(dim=1) + LOG_EPS)


def _cosine(flat: Tensor, flat_hat: Tensor) -> Tensor:
    return F.cosine_similarity(flat, flat_hat, dim=1, eps=EPS)


ERROR_FEATURES = {"log_euclidean": _log_euclidean, "relative_euclidean": _relative_euclidean, "cosine": _cosine}


class DAGMMObjective(Objective):
    """DAGMM's loss; log_prob is -energy, the log-density of z under the training-set mixture.

    backbone: an autoencoder (mlp, conv, resnet) whose code plus the ``error_features`` (names
    of ERROR_FEATURES) is z (N, latent_dim + len(error_features)); lambda_energy, lambda_cov
    weigh the energy and the inverse-covariance penalty; estimation_hidden (a width or a list of widths) and dropout shape the
    estimation network.
    """

    name = "dagmm"
    backbones = ("mlp", "conv", "resnet")
    offers = frozenset({"cluster", "density", "sample", "embed", "decode"})
    needs_training_set_pass = True
    selection_metric = "val/loss"

    def __init__(self, backbone: FeatureExtractor, n_components: int, covariance_type: str,
                 lambda_energy: float = 0.1, lambda_cov: float = 0.005,
                 estimation_hidden: int | list[int] = 10, dropout: float = 0.5,
                 error_features: list[str] = ("log_euclidean", "cosine")):
        super().__init__()
        if isinstance(error_features, str):
            error_features = [error_features]
        valid = isinstance(error_features, (list, tuple, ListConfig))
        error_features = list(error_features) if valid else error_features
        if not valid or any(f not in ERROR_FEATURES for f in error_features) \
                or len(set(error_features)) != len(error_features):
            raise ValueError(f"objective.error_features={error_features!r} is not allowed; allowed: a list of "
                             f"distinct names of {', '.join(ERROR_FEATURES)} (may be empty)")
        self.backbone = backbone
        self.lambda_energy, self.lambda_cov = lambda_energy, lambda_cov
        self.error_features = error_features
        self.parameter_generator = AmortizedParameters(backbone.out_dim + len(error_features), n_components,
                                                       covariance_type, estimation_hidden, dropout)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z (N, latent_dim + len(error_features)), reconstruction x_hat (N, *input_shape))."""
        code = self.backbone(x)
        x_hat = self.backbone.decode(code)
        flat, flat_hat = x.flatten(1), x_hat.flatten(1)
        errors = [ERROR_FEATURES[name](flat, flat_hat).unsqueeze(1) for name in self.error_features]
        return torch.cat([code, *errors], 1), x_hat

    def loss(self, x: Tensor, reduce=None, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        z, x_hat = self.features(x)
        gamma = self.parameter_generator.memberships(z)
        mixture = self.parameter_generator(z, gamma, reduce)
        energy = -mixture.log_prob(z).mean()
        reconstruction = (x - x_hat).flatten(1).pow(2).sum(1).mean()
        penalty = inverse_covariance_penalty(mixture)
        loss = reconstruction + self.lambda_energy * energy + self.lambda_cov * penalty
        return loss, {"reconstruction": reconstruction, "energy": energy, "cov_penalty": penalty}

    def has_mixture(self) -> bool:
        return float(self.parameter_generator.n_seen) > 0

    def mixture(self) -> MixtureDensity:
        # in the networks' precision (the sums are float64 whatever the module's dtype)
        return self.parameter_generator.training_set_mixture(next(self.parameter_generator.parameters()).dtype)

    def log_prob(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """-energy: the log-density of the features z under the training-set mixture."""
        return self.mixture().log_prob(self.features(x)[0])

    def validation_loss(self, x: Tensor) -> Tensor:
        """The training loss per sample with the training-set mixture in place of the batch's:
        its mean does not depend on the batch size and is comparable between epochs."""
        z, x_hat = self.features(x)
        mixture = self.mixture()
        reconstruction = (x - x_hat).flatten(1).pow(2).sum(1)
        return reconstruction - self.lambda_energy * mixture.log_prob(z) + self.lambda_cov * inverse_covariance_penalty(mixture)

    @torch.no_grad()
    def fit_training_set(self, batches, reduce=None) -> None:
        """Training-set mixture from batches of training inputs (this process's share)."""
        self.parameter_generator.fit_training_set((self.features(x)[0] for x in batches), reduce)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.backbone.decode(z[:, :self.backbone.out_dim])  # the code, without the error features
