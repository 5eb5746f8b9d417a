"""The deep GMM as a LightningModule: feature extractor -> parameter generator -> density
evaluator, trained end-to-end with one of the principled objectives.

The three networks live in ``nets/feature_extractor.py`` (or ``nets/flow.py``),
``nets/parameter_generator.py`` and ``mixture/density.py``; an objective (``objectives/``,
its protocol in ``objectives/base.py``) combines them into a loss.  This module adds
optimisation, the start values (after the objective's pre-training stage, if it has one),
the training-set pass some objectives need, NaN guards and the collapse monitor.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data.mapped import row_batches
from ..distributed import all_reduce_with_grad, gather_uneven, sum_over_processes
from ..nets.feature_extractor import FeatureExtractor
from ..objectives.base import Objective
from .base import MixtureModule
from .pretraining import FastPath, augmentation, pretrain
from .step_window import StepWindow

log = logging.getLogger(__name__)


class DeepGMM(MixtureModule):
    """The three networks trained by an objective.

    backbone: the feature extractor (conf/backbone/); objective: a factory
    ``objective(backbone, n_components, covariance_type) -> Objective`` (conf/objective/,
    instantiated partially); optimizer: ``optimizer(params) -> torch.optim.Optimizer``;
    scheduler: ``scheduler(optimizer) -> LRScheduler`` or None for a constant rate;
    init_max_samples: start values are fitted on at most this many training samples (N);
    seed: fixes the start values.  Inputs x (N, *input_shape) as the data module delivers.
    """

    def __init__(self, backbone: FeatureExtractor, objective: Callable[..., Objective], n_components: int,
                 covariance_type: str = "full", optimizer: Callable | None = None,
                 scheduler: Callable | None = None, init_max_samples: int = 20000, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "objective", "optimizer", "scheduler"], logger=False)
        self.objective: Objective = objective(backbone, n_components, covariance_type)
        self.make_optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.make_scheduler = scheduler
        self._val_losses: list[Tensor] = []  # per-sample val/loss terms of this validation

    @property
    def backbone(self) -> FeatureExtractor:
        return self.objective.backbone

    @property
    def conditional(self) -> bool:
        return self.objective.conditional

    def initialize(self, x: Tensor, generator: torch.Generator, y: Tensor | None = None) -> None:
        stage = self.objective.pretraining
        if stage is None:
            self.objective.initialize(x, generator)
            return
        # every restart fits its start with the same draws, and the run goes on from the
        # generator as one restart leaves it: restarts=1 is the run without restarts
        draws = generator.get_state()
        kept = None
        for restart in range(stage.restarts):
            self._pretrain(restart)
            generator.set_state(draws)
            confidence = self.objective.initialize(x, generator)
            if stage.restarts > 1:
                self._report_restart(restart, confidence, x, y)
                if kept is None or confidence > kept[0]:
                    kept = (confidence, restart, {k: v.clone() for k, v in self.objective.state_dict().items()})
        if stage.restarts == 1:
            self.record_metrics({"start/confidence": confidence})
        else:
            confidence, restart, state = kept
            self.objective.load_state_dict(state)
            self.record_metrics({"start/confidence": confidence, "start/autoencoder": float(restart)})
            log.info("VaDE start: autoencoder %d of %d kept, the most confident (mean largest posterior %.4f)",
                     restart + 1, stage.restarts, confidence)

    def _pretrain(self, restart: int) -> None:
        """Pre-train (or load) the autoencoder of one restart: restart 0 from the weights the
        model was built with, restart r > 0 from new ones drawn with seed (seed, r)."""
        # pre-training draws from the global generators only when it is not cached: fork
        # them, so a run that loads the cache continues exactly as the one that wrote it
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if restart:
                torch.manual_seed(int(np.random.SeedSequence([self.hparams.seed, restart]).generate_state(1)[0]))
                self.objective.reset_networks()
                self.objective.to(self.device)
            fast = FastPath(getattr(self.make_optimizer, "keywords", {}).get("fused"), str(self.trainer.precision))
            pretrain(self.objective, self.trainer.datamodule, self.device, self.hparams.seed,
                     self.trainer.is_global_zero, fast, restart)

    def _report_restart(self, restart: int, confidence: float, x: Tensor, y: Tensor | None) -> None:
        prefix = f"start/autoencoder_{restart}"
        self.record_metrics({f"{prefix}/confidence": confidence})
        if y is not None:
            self.record_start_metrics(x, y, prefix)
        log.info("VaDE start: autoencoder %d of %d: mean largest posterior %.4f%s", restart + 1,
                 self.objective.pretraining.restarts, confidence,
                 f", start accuracy {self.exact_metrics[prefix + '/acc']:.4f} (reported, not used)"
                 if f"{prefix}/acc" in self.exact_metrics else "")

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        opt = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return opt
        length = {}
        if getattr(self.make_scheduler, "keywords", {}).get("T_max", 0) is None:  # as long as the run
            length["T_max"] = max(1, self.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": self.make_scheduler(opt, **length)}

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._window = StepWindow()
        # its draws come from the global generator, which checkpoints save and restore
        self._augment = augmentation(*self.objective.augmentation, getattr(self.trainer.datamodule, "image_shape", None))

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = self._augment(x)
        loss, parts = self.objective.loss(x, reduce=all_reduce_with_grad, target=y if self.conditional else None)
        self._window.add(self.global_step, {"loss": loss, **parts})
        # Lightning writes on-step values at these steps; the epoch's last batch comes before
        # the epoch's checkpoint.  On the CPU reading the loss costs nothing, so it is checked
        # every step: a checkpoint every few steps never holds the step after a bad one.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0 \
                or batch_idx + 1 == self.trainer.num_training_batches \
                or (loss.device.type == "cpu" and not torch.isfinite(loss)):
            self._log_window()
        return loss

    def _log_window(self) -> None:
        latest, bad = self._window.flush()
        if bad is not None:
            step, values = bad
            loss = values.pop("loss")
            raise FloatingPointError(
                f"non-finite loss {loss} at epoch {self.current_epoch}, step {step} (parts: {values}); "
                "training stopped before anything was saved: lower model.optimizer.lr, raise "
                "objective.min_scale (where the objective has it) or set trainer.gradient_clip_val")
        self.log("train/loss", latest.pop("loss"), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in latest.items()})

    def on_validation_epoch_start(self) -> None:
        """Objectives whose evaluation mixture is estimated from the training set (DAGMM)
        re-estimate it with the current networks, each process over its share, summed."""
        if not self.objective.needs_training_set_pass or self.trainer.sanity_checking:
            return
        if self.trainer.state.fn != "fit":
            return  # test/validate after training: the checkpoint's estimate is current
        x, _ = self.trainer.datamodule.tensors("train")
        share = row_batches(x, self.trainer.datamodule.eval_batch_size, self.global_rank, self.trainer.world_size)
        batches = (b.to(self.device) for b in share)
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
        return self.objective.has_mixture()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(what the objective scores (N,), the most probable component (N,)); a conditional
        objective scores the targets y."""
        return self.objective.log_prob(x, y if self.conditional else None), self.objective.cluster(x)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if self.objective.selection_metric == "val/loss" and not self.trainer.sanity_checking:
            self._val_losses.append(self.objective.validation_loss(batch[0]).double())

    def extra_eval_metrics(self, stage: str, log_p: Tensor) -> dict[str, float]:
        metrics = {}
        if stage == "val" and self._val_losses:
            metrics["val/loss"] = float(gather_uneven(torch.cat(self._val_losses)).mean())
            self._val_losses.clear()
        if self.conditional:
            return {**metrics, f"{stage}/nll_per_dim": float(-log_p.mean()) / self.objective.target_dim}
        return {**metrics, **super().extra_eval_metrics(stage, log_p)}

    def pixel_bin_width(self, datamodule) -> float | None:
        if not self.objective.exact_input_density:
            return None
        # only a density of dequantised pixels has meaningful bits/dim: a continuous density
        # fitted to raw grey levels can put unbounded mass on constant background pixels
        dequantize = getattr(self.backbone, "dequantize", None)
        return None if dequantize is None else 1.0 / dequantize.levels

    def final_metrics(self, datamodule) -> dict[str, float]:
        """The data module's facts (data/constant_columns, ... for data=array) for metrics.json."""
        return dict(getattr(datamodule, "facts", {}))

    def display_mixture(self):
        return self.objective.mixture()

    def embed(self, x: Tensor) -> Tensor:
        return self.objective.embed(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.objective.decode(z)
