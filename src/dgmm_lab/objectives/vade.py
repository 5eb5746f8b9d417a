"""VaDE (Jiang et al., IJCAI 2017): q(z|x) = N(mu(x), diag sigma^2(x)), p(x|z) from the
decoder, and a global Gaussian-mixture prior p(z) = sum_c pi_c N(z | mu_c, Sigma_c).

The loss is the negative ELBO, per sample:
    -E_q log p(x|z) - sum_c gamma_c [log pi_c + E_q log N(z|mu_c, Sigma_c) - log gamma_c] - H[q]
with gamma_c = p(c | z) and E_q log N(z|mu_c,Sigma_c) = log N(mu|mu_c,Sigma_c)
- 1/2 sum_d sigma_d^2 (Sigma_c^-1)_dd, so every covariance type of the density core works.
Weights are a softmax of free logits (the original code used unconstrained weights).
Training starts from a pre-trained autoencoder and the project's EM-GMM fitted on its codes.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Objective, Pretraining

from ..mixture.density import MixtureDensity, at_least_float32, component_log_prob
from ..mixture.choices import INIT_SELECTIONS
from ..nets.feature_extractor import FeatureExtractor
from ..mixture.covariances import floor_variances, precision_diagonal
from ..nets.parameter_generator import GlobalParameters

log = logging.getLogger(__name__)
LIKELIHOODS = ("bernoulli", "gaussian")
# A prior variance far below the encoder's posterior variance makes the sampled codes' noise
# dominate that direction, and the first gradient steps collapse every code into one
# component (MNIST, 10k images, 10 pre-training epochs: variances of 1e-4 against a posterior
# variance of 0.018, accuracy 0.47 at the start and 0.11 after one epoch).  A tenth of the
# posterior variance prevents it and leaves the fits on well-trained codes unchanged (all of
# MNIST: smallest variances 0.0065-0.018); docs/benchmarks.md.
PRIOR_VARIANCE_FLOOR = 0.1
PRETRAIN_RECONSTRUCTIONS = ("likelihood", "squared_error")


class VaDEObjective(Objective):
    """The negative ELBO per sample; log_prob is the ELBO at the posterior mean.

    backbone: an autoencoder (mlp, conv, resnet) whose code is the posterior mean (N,
    latent_dim), plus a log-variance head; likelihood ``gaussian`` with ``decoder_std`` or
    ``bernoulli`` (pixels in [0, 1]: any other value makes the loss unbounded below); min_scale floors the prior's standard deviations;
    n_init EM starts on the pre-trained codes, the one kept chosen by ``init_selection``
    (``likelihood``, or ``entropy`` of its weights for clusters of about equal size, as
    ``GaussianMixture`` explains).  ``pretrain_epochs`` > 0 adds the autoencoder
    stage (``pretrain_*``: its learning rate, loss, image augmentation and cache);
    ``rotation`` and ``shift`` augment the images of the ELBO's training steps in the same way.
    """

    name = "vade"
    backbones = ("mlp", "conv", "resnet")
    offers = frozenset({"cluster", "density", "sample", "embed", "decode"})

    def __init__(self, backbone: FeatureExtractor, n_components: int, covariance_type: str,
                 likelihood: str = "gaussian", decoder_std: float = 1.0, min_scale: float = 1e-3,
                 n_init: int = 1, init_selection: str = "likelihood", pretrain_epochs: int = 0, pretrain_lr: float = 1e-3,
                 pretrain_reconstruction: str = "likelihood", pretrain_rotation: float = 0.0,
                 pretrain_shift: float = 0.0, pretrain_cache_dir: str | None = None, pretrain_restarts: int = 1,
                 rotation: float = 0.0, shift: float = 0.0):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"objective.likelihood={likelihood!r} is not allowed; allowed: {', '.join(LIKELIHOODS)}")
        if init_selection not in INIT_SELECTIONS:
            raise ValueError(f"objective.init_selection={init_selection!r} is not allowed; allowed: {', '.join(INIT_SELECTIONS)}")
        if pretrain_reconstruction not in PRETRAIN_RECONSTRUCTIONS:
            raise ValueError(f"objective.pretrain_reconstruction={pretrain_reconstruction!r} is not allowed; allowed: "
                             f"{', '.join(PRETRAIN_RECONSTRUCTIONS)}")
        if isinstance(pretrain_restarts, bool) or not isinstance(pretrain_restarts, int) or pretrain_restarts < 1:
            raise ValueError(f"objective.pretrain_restarts={pretrain_restarts!r} is not allowed; allowed: an integer >= 1")
        self.backbone, self.likelihood, self.decoder_std = backbone, likelihood, decoder_std
        self.pretrain_reconstruction, self.n_init = pretrain_reconstruction, n_init
        self.init_selection = init_selection
        self.augmentation = (rotation, shift)
        if pretrain_epochs > 0:
            self.pretraining = Pretraining(pretrain_epochs, pretrain_lr, pretrain_rotation, pretrain_shift,
                                           pretrain_cache_dir, (likelihood, decoder_std, pretrain_reconstruction),
                                           pretrain_restarts)
        self.log_var_head = nn.Linear(backbone.head.in_features, backbone.out_dim)
        self._start_log_var_head()
        self.parameter_generator = GlobalParameters(n_components, backbone.out_dim,
                                                    covariance_type, min_scale)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone.features(x)
        return self.backbone.head(h), self.log_var_head(h).clamp(-20, 10)

    def reconstruction_nll(self, x: Tensor, z: Tensor) -> Tensor:
        out = at_least_float32(self.backbone.decode(z).flatten(1))  # float32 under mixed precision too
        target = x.flatten(1)
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(1)
        sigma = self.decoder_std
        return 0.5 * (((out - target) / sigma).pow(2) + math.log(2 * math.pi * sigma**2)).sum(1)

    def mixture(self) -> MixtureDensity:
        return self.parameter_generator()

    def negative_elbo(self, x: Tensor, sample: bool) -> tuple[Tensor, dict[str, Tensor]]:
        mu, log_var = self.encode(x)
        # under mixed precision (trainer.precision=bf16-mixed) the networks run in bfloat16
        # and the prior's terms in float32 (no-ops in float32 training)
        with torch.autocast(x.device.type, enabled=False):
            mu, log_var = at_least_float32(mu), at_least_float32(log_var)
            z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if sample else mu
            mixture = self.mixture()
            log_gamma = torch.log_softmax(mixture.weighted_log_prob(z), -1)
            gamma = log_gamma.exp()
            expected_log_pz_c = (component_log_prob(mu, mixture.means, mixture.precisions_cholesky,
                                                    mixture.covariance_type)
                                 - 0.5 * log_var.exp() @ precision_diagonal(mixture).T)
            prior = (gamma * (mixture.log_weights + expected_log_pz_c - log_gamma)).sum(1)
            entropy = 0.5 * (1 + math.log(2 * math.pi) + log_var).sum(1)
        reconstruction = self.reconstruction_nll(x, z)
        nelbo = reconstruction - prior - entropy
        return nelbo, {"reconstruction": reconstruction.mean(), "kl": (-prior - entropy).mean()}

    def loss(self, x: Tensor, reduce=None, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        nelbo, logs = self.negative_elbo(x, sample=True)
        return nelbo.mean(), {"nelbo": nelbo.mean(), **logs}

    def log_prob(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """The ELBO with the reconstruction at the posterior mean (deterministic): a
        lower bound on log p(x) up to that single-point approximation."""
        return -self.negative_elbo(x, sample=False)[0]

    # ------------------------------------------------------------------ pre-training
    def pretrain_loss(self, x: Tensor) -> Tensor:
        """Autoencoder loss: the decoder's likelihood, or the squared error of its mean (for a
        Bernoulli decoder, of the pixel probabilities), whose codes cluster better on MNIST
        (docs/benchmarks.md)."""
        z = self.encode(x)[0]
        if self.pretrain_reconstruction == "likelihood":
            return self.reconstruction_nll(x, z).mean()
        return (self.decode(z).flatten(1) - x.flatten(1)).pow(2).sum(1).mean()

    def reset_networks(self) -> None:
        """New initial weights for the autoencoder (from the global generator), as at
        construction: the start of another pre-training restart."""
        for module in self.backbone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self._start_log_var_head()

    def _start_log_var_head(self) -> None:
        # posterior variances of e^-4 whatever the features: the encoder starts nearly deterministic
        nn.init.zeros_(self.log_var_head.weight)
        nn.init.constant_(self.log_var_head.bias, -4.0)

    @torch.no_grad()
    def initialize(self, x: Tensor, generator: torch.Generator) -> float:
        """Fit the project's EM-GMM on the pre-trained codes; start the prior there, its
        variances no smaller than a tenth of the encoder's mean posterior variance.

        Returns the start's confidence: the mean over x of the fit's largest posterior
        probability.  Across autoencoders it tracks the start's accuracy (Spearman 0.93 on
        MNIST seeds 0-9, 0.95 on seeds 10-19, docs/benchmarks.md), so pre-training restarts keep the most confident."""
        from ..mixture.estimator import GaussianMixture  # loads scikit-learn: not in a job without VaDE

        codes, log_var = self.encode(x)
        gen = self.parameter_generator
        gm = GaussianMixture(gen.means.shape[0], covariance_type=gen.covariance_type,
                             n_init=self.n_init, init_selection=self.init_selection, reg_covar=1e-4, max_iter=200,
                             random_state=int(torch.randint(2**31, (1,), generator=generator)))
        codes = codes.double().cpu().numpy()
        gm.fit(codes)
        confidence = float(gm.predict_proba(codes).max(1).mean())
        if self.n_init > 1:
            likeliest = int(gm.init_lower_bounds_.argmax())
            log.info("VaDE start: EM start %d of %d kept (by %s): mean log-likelihood %.4f, effective components "
                     "%.2f of %d; the likeliest start, %d: %.4f and %.2f", gm.best_init_ + 1, self.n_init,
                     self.init_selection, gm.lower_bound_, gm.init_effective_components_[gm.best_init_],
                     gen.means.shape[0], likeliest + 1, gm.init_lower_bounds_[likeliest],
                     gm.init_effective_components_[likeliest])
        floor = PRIOR_VARIANCE_FLOOR * float(log_var.exp().mean())
        covariances, raised = floor_variances(torch.as_tensor(gm.covariances_), gen.covariance_type, floor)
        if raised:
            codes_are = "pre-trained codes" if self.pretraining else "codes of the untrained encoder"
            remedy = "longer pre-training gives codes that need no floor" if self.pretraining else \
                "objective.pretrain_epochs > 0 gives codes that need no floor"
            log.warning("VaDE start: %d variance(s) of the EM fit on the %s were below %.3g (a tenth of the "
                        "encoder's posterior variance) and were raised to it: the codes hardly vary in those "
                        "directions, and a prior that narrow collapses in the first steps; %s",
                        raised, codes_are, floor, remedy)
        gen.set_from(torch.as_tensor(gm.weights_), torch.as_tensor(gm.means_), covariances)
        return confidence

    def embed(self, x: Tensor) -> Tensor:
        return self.encode(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        out = self.backbone.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out
