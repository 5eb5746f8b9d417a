"""The protocol every objective of the deep GMM implements; ``DeepGMM`` reads only this.

An objective owns the parameter generator and combines the three networks (feature extractor
-> parameter generator -> density evaluator) into a loss.  It is built from its config group
(``conf/objective/``) with only its own settings; the backbone, K and the covariance type
come in at build time.  What it offers beyond the loss is declared in class attributes, so
the model, the callbacks and the config checks ask the protocol instead of probing methods.

Shapes: x (N, *input_shape) raw inputs as the data module delivers them; y (N, target_dim)
targets of a conditional objective; features z (N, feature_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..mixture.density import MixtureDensity
from ..nets.feature_extractor import FeatureExtractor

CAPABILITIES = ("cluster", "density", "sample", "embed", "decode")


@dataclass(frozen=True)
class Pretraining:
    """An autoencoder stage before the objective's own training (``DeepGMM`` runs it)."""

    epochs: int
    lr: float
    rotation: float = 0.0      # degrees: random rotations of the images (DEC-DA)
    shift: float = 0.0         # fraction of the image size: random shifts
    cache_dir: str | None = None
    settings: tuple = ()       # what else shapes the autoencoder (part of the cache key)
    restarts: int = 1          # autoencoders pre-trained from their own initial weights; the
                               #   objective's ``initialize`` says which is kept


class Objective(nn.Module):
    """Base class: subclasses set the class attributes and implement ``loss``, ``log_prob``
    and ``embed``; the other methods have the defaults their capabilities imply."""

    name: ClassVar[str]
    # the feature extractors (conf/backbone/) with which the objective is well-posed
    backbones: ClassVar[tuple[str, ...]]
    # what it offers, of CAPABILITIES: clustering, a density (or score), samples in input
    # space, an embedding, a decoder from features back to inputs
    offers: ClassVar[frozenset[str]]
    # log_prob is the exact log-density of the inputs (so bits/dim are meaningful)
    exact_input_density: ClassVar[bool] = False
    # a density of a target y given x (log_prob(x, y)), with one mixture per input
    conditional: ClassVar[bool] = False
    # the evaluation mixture is estimated over the training set before every validation
    needs_training_set_pass: ClassVar[bool] = False
    # what checkpoints and sweeps select by (optimized_metric's default): the validation
    # metric whose minimum means the better model; DAGMM's energy (its val/nll) is not one,
    # it rises while the whole loss falls, so DAGMM takes its loss on validation data
    selection_metric: ClassVar[str] = "val/nll"
    # set by the constructor where the settings ask for autoencoder pre-training
    pretraining: Pretraining | None = None
    # (degrees, fraction of the image size): the training steps' images rotated and shifted
    # at random (DEC-DA augments its clustering stage too); validation and test see them as they are
    augmentation: tuple[float, float] = (0.0, 0.0)

    backbone: FeatureExtractor

    def loss(self, x: Tensor, reduce=None, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss, named parts to log); ``reduce`` sums batch statistics over processes
        where the loss needs global ones (DAGMM's moments); ``target`` is y (conditional)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """(N,) what the objective scores: log p(x), an ELBO, -energy or log p(y | x)."""
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """(N, feature_dim) the features the mixture models (an MDN: the backbone's code)."""
        raise NotImplementedError

    def mixture(self) -> MixtureDensity:
        """The global mixture over the features (not for conditional objectives)."""
        raise NotImplementedError(f"objective={self.name} has no global mixture")

    def has_mixture(self) -> bool:
        """Whether the global mixture exists now (DAGMM's only after its first estimate)."""
        return not self.conditional

    def cluster(self, x: Tensor) -> Tensor:
        """(N,) the most probable component of each input."""
        return self.mixture().predict(self.embed(x))

    def decode(self, z: Tensor) -> Tensor | None:
        """(N, *input_shape) features back to inputs; None where there is no decoder."""
        return None

    def initialize(self, x: Tensor, generator) -> None:
        """Start values from a training subsample x, after any pre-training."""

    def validation_loss(self, x: Tensor) -> Tensor:
        """(N,) per-sample terms whose mean is the loss on held-out data (``val/loss``; the
        objectives whose ``selection_metric`` it is)."""
        raise NotImplementedError(f"objective={self.name} logs no val/loss")

    def pretrain_loss(self, x: Tensor) -> Tensor:
        """The pre-training stage's loss (objectives with ``pretraining``)."""
        raise NotImplementedError(f"objective={self.name} has no pre-training stage")

    def fit_training_set(self, batches, reduce=None) -> None:
        """Estimate the evaluation mixture from batches of this process's training share
        (objectives with ``needs_training_set_pass``)."""
        raise NotImplementedError(f"objective={self.name} needs no training-set pass")

    def check_offers(self, capability: str) -> None:
        """A clear error where the objective does not offer what is asked of it."""
        if capability not in self.offers:
            raise ValueError(f"objective={self.name} does not offer {capability}; "
                             f"it offers: {', '.join(c for c in CAPABILITIES if c in self.offers)}")
