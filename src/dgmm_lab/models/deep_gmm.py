"""The deep GMM as a LightningModule: feature extractor -> parameter generator -> density
evaluator, trained end-to-end with one of the principled objectives.

The three networks live in ``nets/feature_extractor.py`` (or ``nets/flow.py``),
``nets/parameter_generator.py`` and ``mixture/density.py``; ``objectives/`` combines them
into a loss.  This module adds optimisation, start values (k-means or EM on pre-trained
codes, cached), NaN guards and the collapse monitor.
"""

from __future__ import annotations

import hashlib
import time
import logging
from pathlib import Path

import torch
from torch import Tensor

from ..data.augment import random_affine
from ..distributed import all_reduce_with_grad, sum_over_processes
from ..nets.feature_extractor import FeatureExtractor
from ..objectives import OBJECTIVES
from .base import MixtureModule

log = logging.getLogger(__name__)
_MIXTURE = "parameter_generator."


class DeepGMM(MixtureModule):
    def __init__(self, backbone: FeatureExtractor, objective: str, n_components: int,
                 covariance_type: str = "full", lr: float = 1e-3, weight_decay: float = 0.0,
                 lr_schedule: str = "cosine", min_scale: float = 1e-3,
                 lambda_energy: float = 0.1, lambda_cov: float = 0.005, estimation_dropout: float = 0.5,
                 likelihood: str = "bernoulli", decoder_std: float = 1.0,
                 pretrain_epochs: int = 0, pretrain_lr: float = 1e-3, pretrain_reconstruction: str = "likelihood",
                 pretrain_rotation: float = 0.0, pretrain_shift: float = 0.0,
                 pretrain_cache_dir: str | None = None, n_init: int = 1, target_dim: int | None = None,
                 init_max_samples: int = 20000, seed: int = 0):
        super().__init__()
        if not 0 <= pretrain_rotation <= 180:
            raise ValueError(f"model.pretrain_rotation={pretrain_rotation!r} is not allowed; allowed: 0..180 (degrees)")
        if not 0 <= pretrain_shift < 0.5:
            raise ValueError(f"model.pretrain_shift={pretrain_shift!r} is not allowed; "
                             "allowed: 0 <= shift < 0.5 (fraction of the image size)")
        self.save_hyperparameters(ignore=["backbone"], logger=False)
        self.objective = OBJECTIVES[objective](
            backbone, n_components, covariance_type, min_scale=min_scale,
            lambda_energy=lambda_energy, lambda_cov=lambda_cov, dropout=estimation_dropout, likelihood=likelihood,
            decoder_std=decoder_std, pretrain_reconstruction=pretrain_reconstruction, target_dim=target_dim)
        self.conditional = getattr(self.objective, "conditional", False)

    @property
    def backbone(self) -> FeatureExtractor:
        return self.objective.backbone

    # ------------------------------------------------------------------ start values
    def initialize(self, x: Tensor, generator: torch.Generator) -> None:
        if self.hparams.pretrain_epochs > 0 and hasattr(self.objective, "pretrain_loss"):
            # pre-training draws from the global generators only when it is not cached: fork
            # them, so a run that loads the cache continues exactly as the one that wrote it
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                self._pretrain()
        self.objective.initialize(x, generator, n_init=self.hparams.n_init)

    def _pretrain_cache(self) -> Path | None:
        if not self.hparams.pretrain_cache_dir:
            return None
        dm = self.trainer.datamodule
        key = repr((type(self.backbone).__name__, sorted(dm.hparams.items()) if hasattr(dm, "hparams") else None,
                    dm.n_train, self.backbone.out_dim, sum(p.numel() for p in self.backbone.parameters()),
                    self.hparams.pretrain_epochs, self.hparams.pretrain_lr, self.hparams.seed,
                    self.hparams.likelihood, self.hparams.decoder_std, self.hparams.pretrain_reconstruction,
                    self.hparams.pretrain_rotation, self.hparams.pretrain_shift))
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return Path(self.hparams.pretrain_cache_dir) / f"pretrain-{digest}.pt"

    def _pretrain(self) -> None:
        """Autoencoder pre-training (reconstruction only), cached on disk by its settings so
        a sweep over K or covariance type pre-trains once.  With ``pretrain_rotation`` or
        ``pretrain_shift`` the autoencoder learns randomly rotated and shifted images (DEC-DA)."""
        cache = self._pretrain_cache()
        if cache is not None and cache.exists():
            state = torch.load(cache, map_location=self.device)
            self.objective.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith(_MIXTURE)}, strict=False)
            log.info("pre-trained autoencoder loaded from %s", cache)
            return
        params = [p for n, p in self.objective.named_parameters() if not n.startswith(_MIXTURE)]
        opt = torch.optim.Adam(params, lr=self.hparams.pretrain_lr)
        loader = self.trainer.datamodule.train_dataloader()
        augment = self._pretrain_augmentation()
        for epoch in range(self.hparams.pretrain_epochs):
            total = 0.0
            for x, _ in loader:
                loss = self.objective.pretrain_loss(augment(x.to(self.device)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            log.info("pre-training epoch %d: reconstruction %.4f", epoch, total / len(loader))
        if cache is not None and self.global_rank == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # the autoencoder only: the mixture is fitted afterwards, per K and covariance type
            state = {k: v for k, v in self.objective.state_dict().items() if not k.startswith(_MIXTURE)}
            torch.save(state, cache)

    def _pretrain_augmentation(self):
        rotation, shift = self.hparams.pretrain_rotation, self.hparams.pretrain_shift
        if not rotation and not shift:
            return lambda x: x
        shape = self.trainer.datamodule.image_shape
        return lambda x: random_affine(x, shape, rotation, shift)

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                               weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, parts = self.objective.loss(x, reduce=all_reduce_with_grad, target=y if self.conditional else None)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} (parts: { {k: v.item() for k, v in parts.items()} }); "
                "training stopped before anything was saved: lower model.lr, raise "
                "model.min_scale or set trainer.gradient_clip_val")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items()})
        return loss

    def on_validation_epoch_start(self) -> None:
        """Objectives whose evaluation mixture is estimated from the training set (DAGMM)
        re-estimate it with the current networks, each process over its share, summed."""
        if not hasattr(self.objective, "fit_training_set") or self.trainer.sanity_checking:
            return
        if self.trainer.state.fn != "fit":
            return  # test/validate after training: the checkpoint's estimate is current
        x, _ = self.trainer.datamodule.tensors("train")
        share = x[self.global_rank::self.trainer.world_size]
        batches = (b.to(self.device) for b in torch.split(share, self.trainer.datamodule.eval_batch_size))
        self.objective.fit_training_set(batches, reduce=sum_over_processes)

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/lr": self.optimizers().param_groups[0]["lr"],
                       "train/seconds_per_epoch": time.perf_counter() - self._epoch_start})
        if not self.has_global_mixture():
            return
        with torch.no_grad():
            mixture = self.objective.mixture()
            weights = mixture.weights.double()
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum()
            eig = mixture.covariance_eigenvalues()
        self.log_dict({"train/min_covariance_eigenvalue": float(eig.min()),
                       "train/effective_components": float(entropy.exp())})

    def has_global_mixture(self) -> bool:
        # an MDN has one mixture per input; DAGMM's exists after its first estimate
        return not self.conditional and getattr(self.objective, "has_mixture", lambda: True)()

    # ------------------------------------------------------------------ inference
    def log_prob(self, x: Tensor) -> Tensor:
        return self.objective.log_prob(x)

    def predict(self, x: Tensor) -> Tensor:
        return self._cluster(x)

    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.conditional:
            return self.objective.log_prob(x, y), self._cluster(x)
        return self.objective.log_prob(x), self._cluster(x)

    def _cluster(self, x: Tensor) -> Tensor:
        """The most probable component: of the input's own mixture for an MDN, else of the
        features under the model's mixture."""
        if self.conditional:
            return self.objective.cluster(x)
        return self.objective.mixture().predict(self.objective.embed(x))

    def extra_eval_metrics(self, stage: str, log_p: Tensor) -> dict[str, float]:
        if self.conditional:
            return {f"{stage}/nll_per_dim": float(-log_p.mean()) / self.hparams.target_dim}
        return super().extra_eval_metrics(stage, log_p)

    def pixel_bin_width(self, datamodule) -> float | None:
        if self.hparams.objective != "nll":
            return None
        # only a density of dequantised pixels has meaningful bits/dim: a continuous density
        # fitted to raw grey levels can put unbounded mass on constant background pixels
        dequantize = getattr(self.backbone, "dequantize", None)
        return None if dequantize is None else 1.0 / dequantize.levels

    def final_metrics(self, datamodule) -> dict[str, float]:
        """The data module's facts (data/constant_columns, ... for data=array) for metrics.json."""
        return dict(getattr(datamodule, "facts", {}))

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        return self.objective.mixture().responsibilities(self.objective.embed(x))

    def display_mixture(self):
        return self.objective.mixture()

    def embed(self, x: Tensor) -> Tensor:
        return self.objective.embed(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.objective.decode(z)
