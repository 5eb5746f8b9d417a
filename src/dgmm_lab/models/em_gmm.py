"""The classical GMM as a LightningModule: one epoch = one exact EM iteration.

Training batches only accumulate sufficient statistics (``mixture/em.py``); after the
last batch of an epoch the statistics are summed over processes with one all-reduce and
the M-step runs, identically on every rank.  The M-step runs before validation, so
``val/*`` of epoch t describe the mixture after iteration t.  Parameters are buffers;
there is no optimiser.
"""

from __future__ import annotations

import logging
import math
import time
import torch
from torch import Tensor

from ..mixture import em
from ..mixture.choices import INIT_SELECTIONS
from ..mixture.em import select_start
from ..mixture.diagnostics import automatic_reg_covar, degenerate_components, mean_feature_variance, remedy
from ..mixture.density import MixtureDensity, check_covariance_type, covariance_eigenvalues, covariance_shape
from ..mixture.start_values import load_start_values
from ..nets.feature_extractor import FeatureExtractor
from ..data.mapped import row_batches
from ..distributed import sum_over_processes
from .base import MixtureModule

log = logging.getLogger(__name__)


class EMGMM(MixtureModule):
    """A Gaussian mixture over the backbone's features z (N, D), fitted by exact EM, one
    iteration per epoch.

    Parameters
    ----------
    backbone : the fixed map x -> z (identity, pca); D = ``backbone.out_dim``.
    n_components : K.
    covariance_type : full, tied, diag or spherical (the shapes below).
    tol : stop when the mean log-likelihood per sample changes by less.
    reg_covar : added to every variance in each M-step; "auto": 1e-6 where the training rows
        determine the covariances, else from the data (``diagnostics.automatic_reg_covar``),
        chosen at the start and logged (``train/reg_covar`` in metrics.json).
    max_iter : at most this many EM iterations (epochs).
    init_params : kmeans, k-means++, random or random_from_data (``em.initial_responsibilities``).
    n_init : restarts, each refined by ``init_em_steps`` EM steps on the initialisation sample
        (at most ``init_max_samples`` training samples); ``init_selection`` keeps one:
        ``likelihood`` (the most likely) or ``entropy`` (the likeliest of the most evenly
        weighted, for clusters of about equal size; ``GaussianMixture`` explains it).
    compute_dtype : "float64", or "float32" for the E-step's products (statistics stay float64).
    init_from : a .npz/.pt file of start values (``mixture.start_values.load_start_values``).
    seed : seeds the initialisation.

    Buffers (float64)
    -----------------
    log_weights (K,); means (K, D); precisions_cholesky full (K, D, D), tied (D, D), diag (K, D),
    spherical (K,); shift (D,): the centre of the statistics; lower_bound: the last mean
    log-likelihood; n_iter: the EM iterations run.  ``mixture`` wraps them as a ``MixtureDensity``.
    """

    # fixed maps only: EM does not train a feature extractor (nets would stay at their random init)
    backbones = ("identity", "pca")

    def __init__(self, backbone: FeatureExtractor, n_components: int, covariance_type: str = "full",
                 tol: float = 1e-3, reg_covar: float | str = "auto", max_iter: int = 100,
                 init_params: str = "kmeans", n_init: int = 1, init_max_samples: int = 20000,
                 init_em_steps: int = 5, compute_dtype: str = "float64", init_from: str | None = None,
                 seed: int = 0, init_selection: str = "likelihood"):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"], logger=False)
        self.automatic_optimization = False
        self.backbone = backbone
        self.covariance_type = check_covariance_type(covariance_type)
        if init_selection not in INIT_SELECTIONS:
            raise ValueError(f"model.init_selection={init_selection!r} is not allowed; allowed: {', '.join(INIT_SELECTIONS)}")
        k, d = n_components, backbone.out_dim
        # user-given start values, checked now so a bad file stops the run before training
        self.given = load_start_values(init_from, k, d, covariance_type) if init_from else {}
        self.register_buffer("log_weights", torch.full((k,), -math.log(k), dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, d, dtype=torch.float64))
        self.register_buffer("precisions_cholesky", torch.ones(covariance_shape(k, d, covariance_type), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("lower_bound", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("n_iter", torch.tensor(0))
        # the value in use (chosen in initialize for "auto"): in checkpoints, so resuming keeps it
        self.register_buffer("reg", torch.tensor(1e-6 if reg_covar == "auto" else float(reg_covar),
                                                 dtype=torch.float64))
        self.compute_dtype = getattr(torch, compute_dtype)

    @property
    def reg_covar(self) -> float:
        return float(self.reg)

    @property
    def mixture(self) -> MixtureDensity:
        return MixtureDensity(self.log_weights, self.means, self.precisions_cholesky,
                              self.covariance_type)

    def _set_mixture(self, weights: Tensor, means: Tensor, prec_chol: Tensor) -> None:
        for name, value in (("log_weights", weights.log()), ("means", means),
                            ("precisions_cholesky", prec_chol)):
            if not torch.isfinite(value).all():
                raise FloatingPointError(f"EM produced non-finite {name}; not saving it")
            getattr(self, name).copy_(value)

    def configure_optimizers(self):
        return None

    # ------------------------------------------------------------------ init
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "exact_train_shards"):
            datamodule.exact_train_shards = True

    def initialize(self, x: Tensor, generator: torch.Generator, y: Tensor | None = None) -> None:
        z = self.backbone(x).double()
        self.shift.copy_(z.mean(0))
        if self.hparams.reg_covar == "auto":
            n_train = self.trainer.datamodule.n_train
            reg, why = automatic_reg_covar(z, n_train, self.hparams.n_components, self.covariance_type)
            self.reg.fill_(reg)
            if why and self.global_rank == 0:
                log.warning("EM: model.reg_covar=auto chose %.3g (%s); model.reg_covar=<number> sets it", reg, why)
        if self.given:
            self._set_mixture(*self._given_start(z, generator))
            return
        starts = [self._initial_em(z, generator) for _ in range(self.hparams.n_init)]
        best, _ = select_start([s[0] for s in starts], [s[1] for s in starts], self.hparams.init_selection)
        self._set_mixture(*starts[best][1:])

    def _given_start(self, z: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """As scikit-learn's weights_init/means_init/precisions_init: what the file gives
        is used as is, the rest comes from one M-step after ``init_params``."""
        given = {name: value.to(self.device) for name, value in self.given.items()}
        if len(given) < 3:
            r = em.initial_mixture(z, self.hparams.n_components, self.covariance_type, self.hparams.init_params, g,
                                   self.reg_covar, shift=self.shift)
            given = {"weights": r.weights, "means": r.means, "precisions_cholesky": r.precisions_cholesky, **given}
        log.info("EM starts from the values in %s (%s)", self.hparams.init_from, ", ".join(sorted(self.given)))
        return given["weights"], given["means"], given["precisions_cholesky"]

    def _initial_em(self, z: Tensor, g: torch.Generator):
        """One initialisation, refined by a few EM steps on the subsample; of the ``n_init``
        restarts ``init_selection`` keeps one, as ``GaussianMixture`` does."""
        r = em.initial_mixture(z, self.hparams.n_components, self.covariance_type, self.hparams.init_params, g,
                               self.reg_covar, shift=self.shift)
        lower_bound = -math.inf
        for _ in range(self.hparams.init_em_steps):
            r, lower_bound, _ = em.em_step(z, r.mixture(self.covariance_type), self.shift, self.reg_covar,
                                           self.compute_dtype)
        return lower_bound, r.weights, r.means, r.precisions_cholesky

    # ------------------------------------------------------------------ EM iteration
    def on_train_epoch_start(self) -> None:
        k, d = self.means.shape
        self._stats = em.SufficientStats.zeros(k, d, self.covariance_type, self.device)
        self._worst = em.WorstPoints(k)
        self._t0 = time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        with torch.no_grad():
            z = self.backbone(x)
            log_p = em.accumulate(self._stats, z, self.mixture, self.shift, self.compute_dtype)
            self._worst.update(z, log_p)
        if self.trainer.is_last_batch:
            self._finish_iteration()

    def _finish_iteration(self) -> None:
        sum_over_processes(self._stats.tensors())
        result = em.m_step(self._stats, self.shift, self.covariance_type, self.reg_covar)
        if result.empty_components:
            candidates = self.trainer.strategy.broadcast(self._worst.points, src=0)
            log.warning("EM iteration %d: components %s lost all their mass; re-seeded at the "
                        "worst-explained points", int(self.n_iter) + 1, result.empty_components)
            result = em.reseed_empty(result, candidates.to(self.device), self.covariance_type)
        lower_bound = self._stats.log_likelihood / self._stats.n_samples
        change = float(lower_bound - self.lower_bound)
        self._set_mixture(result.weights, result.means, result.precisions_cholesky)
        self.lower_bound.copy_(lower_bound)
        self.n_iter += 1
        self._count_as_optimizer_step()
        self.log_exact({
            "train/log_likelihood": float(lower_bound),
            "train/log_likelihood_change": change if math.isfinite(change) else 0.0,
            "train/seconds_per_iteration": time.perf_counter() - self._t0,
            "train/min_covariance_eigenvalue": float(covariance_eigenvalues(result.covariances,
                                                                            self.covariance_type).min()),
            "train/empty_components": float(len(result.empty_components)),
            "train/n_iter": float(self.n_iter),  # iterations run (the tested checkpoint may be an earlier one)
        })
        self._log_histogram("train/weights", result.weights)
        if abs(change) < self.hparams.tol or int(self.n_iter) >= self.hparams.max_iter:
            self.trainer.should_stop = True

    def _count_as_optimizer_step(self) -> None:
        # An M-step is this model's optimisation step.  Lightning's global_step counts
        # optimizer steps, and ModelCheckpoint never saves while it stays 0.
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _log_histogram(self, tag: str, values: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(experiment, "add_histogram"):
            experiment.add_histogram(tag, values.float().cpu(), int(self.n_iter))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_norm, log_resp = self.mixture.log_responsibilities(self.backbone(x).double())
        return log_norm, log_resp.argmax(-1)

    def display_mixture(self) -> MixtureDensity:
        return self.mixture

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.backbone.decode(z)

    def final_metrics(self, datamodule) -> dict[str, float]:
        """BIC, AIC and the count of degenerate components (warned of, with the
        remedy) of the weights tested, and the data module's facts (data/constant_columns, ...)."""
        x, _ = datamodule.tensors("train")
        # in memory one batch (the numbers as before), a mapped file's rows in evaluation batches
        size = len(x) if isinstance(x, torch.Tensor) else datamodule.eval_batch_size
        log_lik = sum(self.mixture.log_prob(self.backbone(xb.to(self.device)).double()).sum()
                      for xb in row_batches(x, size))
        degenerate = self.degenerate_components(len(x))
        return {"train/bic": self.mixture.bic_of(log_lik, len(x)), "train/aic": self.mixture.aic_of(log_lik),
                "train/degenerate_components": float(len(degenerate)), "train/reg_covar": self.reg_covar,
                **getattr(datamodule, "facts", {})}

    def degenerate_components(self, n_train: int) -> dict[int, tuple[str, str]]:
        """{component: (kind, why)} for covariances the data does not determine; warned of
        with the remedy (rank 0)."""
        m, reg = self.mixture, self.reg_covar
        variance = mean_feature_variance(m.weights, m.means, m.covariances, self.covariance_type)
        why = degenerate_components(m.weights, m.covariances, n_train, self.covariance_type, reg, variance)
        if why and self.global_rank == 0:
            listed = "; ".join(f"component {j}: {text}" for j, (_, text) in list(why.items())[:8])
            more = f"; and {len(why) - 8} more" if len(why) > 8 else ""
            log.warning("EM: %d of %d components are degenerate (%s%s): the data does not determine their "
                        "covariances, model.reg_covar=%g alone keeps them invertible, and the likelihood is "
                        "meaningless (train log-likelihood %.4g per sample). Remedy: %s", len(why),
                        len(m.weights), listed, more, reg, float(self.lower_bound),
                        remedy({kind for kind, _ in why.values()}, self.covariance_type, variance))
        return why

