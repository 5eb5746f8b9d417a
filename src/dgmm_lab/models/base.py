"""What both LightningModules share: evaluation over the whole split, on every rank."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..data.mapped import row_batches
from ..distributed import gather_uneven
from ..metrics import anomaly_metrics, clustering_metrics

log = logging.getLogger(__name__)


class MixtureModule(pl.LightningModule):
    """Subclasses implement ``evaluate_batch(x) -> (log p(x) (N,), cluster (N,))``.

    ``val/nll`` and ``test/nll`` are mean negative log-likelihoods per sample in nats over
    the whole split (gathered from all ranks), plus ``acc``/``nmi``/``ari`` when labels exist.
    """

    def __init__(self):
        super().__init__()
        self._eval_outputs: list[tuple[Tensor, Tensor, Tensor]] = []
        # the latest value of every metric in full float64 precision (Lightning's logged
        # copies are float32); train.py writes these into metrics.json
        self.exact_metrics: dict[str, float] = {}
        # set once start values exist; a run resumed from a checkpoint skips initialisation
        self.register_buffer("initialized", torch.tensor(False))
        # what a trained model needs beyond its weights (training.py sets it; the checkpoint
        # carries it): the input transform, image shape, target dimension and code decoder
        self.inputs: dict | None = None
        # anomaly runs: the flagging threshold on the anomaly score, fixed on validation data
        self.anomaly: dict | None = None

    def on_fit_start(self) -> None:
        if bool(self.initialized):
            return
        x, y = self._init_sample()
        if self.backbone.needs_fit:
            self.backbone.fit(x)
        self.initialize(x, torch.Generator(device=self.device).manual_seed(self.hparams.seed), y)
        self.initialized.fill_(True)
        self.record_start_metrics(x, y)

    @torch.no_grad()
    def record_start_metrics(self, x: Tensor, y: Tensor, prefix: str = "start") -> None:
        """Clustering metrics of the start values on the initialisation sample (start/acc,
        nmi, ari): VaDE, for one, keeps much of the partition it starts from, so a sweep
        should show how much of each result its start set.  Reported only: nothing chooses
        by them."""
        if not has_class_labels(y) or not self.has_global_mixture():
            return
        was_training = self.training
        self.eval()  # batch norm must not learn from this pass
        clusters = torch.cat([self.evaluate_batch(b)[1] for b in torch.split(x, self.trainer.datamodule.eval_batch_size)])
        self.train(was_training)
        scores = clustering_metrics(y.cpu().numpy(), clusters.cpu().numpy())
        self.record_metrics({f"{prefix}/{name}": value for name, value in scores.items()})

    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Values known before the first step: into metrics.json and TensorBoard at step 0."""
        self.exact_metrics.update(metrics)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=0)

    def has_global_mixture(self) -> bool:
        """One mixture for all inputs that exists before training (not so for a mixture
        density network, or for DAGMM before its first estimate)."""
        return True

    def initialize(self, x: Tensor, generator: torch.Generator, y: Tensor | None = None) -> None:
        """Start values from a training subsample x (raw inputs); its labels y, where the data
        has them, may only be reported, never used to choose."""
        raise NotImplementedError

    # ---- what every mixture model offers (the pictures callback and evaluate use these)
    def evaluate_batch(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(log p(x) (N,), cluster (N,)); conditional models score the targets y."""
        raise NotImplementedError

    def display_mixture(self):
        """The mixture in feature space, as it is used for evaluation."""
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """Inputs -> the features the mixture models."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor | None:
        """Features -> input space (None where the features cannot be decoded)."""
        return None

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples in input space (decoded where the model has a decoder)."""
        z, _ = self.display_mixture().sample(n, generator)
        decoded = self.decode(z.float())
        return z if decoded is None else decoded

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor | None:
        return self.decode(self.embed(x))

    def setup(self, stage: str) -> None:
        """Each process records the hyper-parameters it runs with (ranks/rankN.json in the
        run directory): proof that every rank of a job trains the same configuration."""
        root = Path(self.trainer.default_root_dir)
        if stage == "fit" and root.exists():
            (root / "ranks").mkdir(exist_ok=True)
            record = {"global_rank": self.global_rank, "world_size": self.trainer.world_size,
                      "hparams": {k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool))}}
            (root / "ranks" / f"rank{self.global_rank}.json").write_text(json.dumps(record, indent=1))

    def _init_sample(self) -> tuple[Tensor, Tensor]:
        """Start values are fitted on this seeded subsample of the training split (at most
        ``hparams.init_max_samples``): the same on every rank, without communication."""
        x, y = self.trainer.datamodule.tensors("train")
        n = min(x.shape[0], self.hparams.init_max_samples)
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.hparams.seed))[:n]
        return x[idx].to(self.device), y[idx]

    # ---- a resumed run continues the random stream of the uninterrupted one; a checkpoint
    # carries the run's resolved config and metrics so far (it is self-contained: evaluate
    # needs no run dir, a run resumed at its end still has its val/train metrics)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self, "run_config", None) is not None:
            checkpoint["dgmm_lab_config"] = self.run_config
        if self.inputs is not None:
            checkpoint["dgmm_lab_inputs"] = self.inputs
        if self.anomaly is not None:
            checkpoint["dgmm_lab_anomaly"] = self.anomaly
        checkpoint["dgmm_lab_metrics"] = dict(self.exact_metrics)
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for key, value in checkpoint.get("dgmm_lab_metrics", {}).items():
            self.exact_metrics.setdefault(key, value)  # testing a best checkpoint keeps the last epoch's
        self.inputs = checkpoint.get("dgmm_lab_inputs", self.inputs)
        self.anomaly = checkpoint.get("dgmm_lab_anomaly", self.anomaly)
        state = checkpoint.get("rng_state")
        if state:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    @torch.no_grad()
    def _eval_step(self, batch) -> None:
        x, y = batch
        log_p, cluster = self.evaluate_batch(x, y)
        self._eval_outputs.append((log_p.double(), cluster, y))

    def _eval_epoch_end(self, stage: str) -> None:
        if not self._eval_outputs:
            return
        log_p, cluster, y = (gather_uneven(torch.cat(parts)) for parts in zip(*self._eval_outputs))
        self._eval_outputs.clear()
        metrics = {f"{stage}/nll": float(-log_p.mean())}
        if self.trainer.sanity_checking:
            return
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "anomaly_protocol", False) and stage == "val":
            self.anomaly = anomaly_threshold(-log_p, datamodule)
            metrics["val/anomaly_threshold"] = self.anomaly["threshold"]
        if getattr(datamodule, "anomaly_protocol", False) and stage == "test":
            threshold = self.anomaly["threshold"] if self.anomaly else None
            # test/f1 at the test set's true rate (DAGMM's protocol); data.contamination
            # only places the label-free threshold, test/*_at_threshold
            scores = anomaly_metrics(y.cpu().numpy(), (-log_p).cpu().numpy(), threshold=threshold,
                                     train_energy=-self.split_log_prob("train").numpy())
            metrics.update({f"{stage}/{name}": value for name, value in scores.items()})
        elif has_class_labels(y):
            for name, value in clustering_metrics(y.cpu().numpy(), cluster.cpu().numpy()).items():
                metrics[f"{stage}/{name}"] = value
        if self.has_global_mixture():
            metrics[f"{stage}/effective_clusters"] = self._effective_clusters(cluster, stage)
        metrics.update(self.extra_eval_metrics(stage, log_p))
        if stage == "val":  # the best epoch's value in float64 (Lightning's monitor is float32)
            for key in ("val/nll", "val/bits_per_dim", "val/loss"):
                if key in metrics:
                    metrics[f"best/{key}"] = min(metrics[key], self.exact_metrics.get(f"best/{key}", math.inf))
        self.log_exact(metrics)

    def _effective_clusters(self, cluster: Tensor, stage: str) -> float:
        """exp of the entropy of the split's cluster shares: K where every component holds as
        many samples, 1 where one holds them all.  Without labels it is what says a run
        collapsed, so a test split in fewer than half the components is said out loud."""
        k = self.hparams.n_components
        shares = torch.bincount(cluster.long().cpu(), minlength=k).double() / max(1, len(cluster))
        effective = math.exp(float(torch.special.entr(shares).sum()))
        if stage == "test" and effective < k / 2 and self.global_rank == 0:
            log.warning("test: the samples fall into %.2f effective clusters of K=%d (exp of the entropy of "
                        "the cluster shares): the mixture has collapsed onto a few components; longer "
                        "pre-training, a lower learning rate or a smaller K may help", effective, k)
        return effective

    @torch.no_grad()
    def split_log_prob(self, split: str) -> Tensor:
        """(N,) float64 on the CPU: what the model scores on a whole split, in evaluation
        batches, on this process (every process holds the splits)."""
        x, y = self.trainer.datamodule.tensors(split)
        size = self.trainer.datamodule.eval_batch_size
        return torch.cat([self.evaluate_batch(xb.to(self.device), yb.to(self.device))[0].double().cpu()
                          for xb, yb in zip(row_batches(x, size), torch.split(y, size))])

    def log_exact(self, metrics: dict[str, float]) -> None:
        self.exact_metrics.update(metrics)
        # identical on every rank (already gathered or reduced): no further sync needed
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def extra_eval_metrics(self, stage: str, log_p: Tensor) -> dict[str, float]:
        """Bits per dimension where the model is a density of image pixels: the discrete
        probability of a pixel bin is about p(x) * width^D, so bits/dim =
        (nll - D log width) / (D log 2), comparable between models scored on the same pixels."""
        datamodule = self.trainer.datamodule
        width = self.pixel_bin_width(datamodule)
        if width is None or getattr(datamodule, "image_shape", None) is None:
            return {}
        dim = math.prod(datamodule.image_shape)
        return {f"{stage}/bits_per_dim": (float(-log_p.mean()) - dim * math.log(width)) / (dim * math.log(2))}

    def pixel_bin_width(self, datamodule) -> float | None:
        """Width of one grey level in the space the density lives in; None when the density
        is not one of the input pixels (features, ELBOs, energies)."""
        return None


def anomaly_threshold(scores: Tensor, datamodule) -> dict:
    """The anomaly score above which a sample is flagged: the (1 - rate) quantile of the
    validation split's scores (normal samples only, under the anomaly protocol), with rate
    ``data.contamination`` or else the anomaly rate of the whole data.  It flags about that
    fraction of normal data, fixed at training time, so new data is never needed to set it."""
    rate = datamodule.contamination if datamodule.contamination is not None else datamodule.anomaly_rate
    threshold = float(torch.quantile(scores.double().cpu(), 1 - rate))
    return {"threshold": threshold, "rate": float(rate), "chosen_on": "validation normals",
            "score": "anomaly score = -log-density (DAGMM: energy)"}


def has_class_labels(y: Tensor) -> bool:
    """Integer class labels (unlabelled splits carry -1, regression targets are floats)."""
    return not y.is_floating_point() and y.numel() > 0 and int(y.min()) >= 0
