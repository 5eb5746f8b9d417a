"""What both LightningModules share: evaluation over the whole split, on every rank."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor

from ..metrics import clustering_metrics


def gather_uneven(t: Tensor) -> Tensor:
    """Concatenate a tensor from all processes; ranks may hold different lengths."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class MixtureModule(pl.LightningModule):
    """Subclasses implement ``evaluate_batch(x) -> (log p(x) (N,), cluster (N,))``.

    ``val/nll`` and ``test/nll`` are mean negative log-likelihoods per sample in nats over
    the whole split (gathered from all ranks), plus ``acc``/``nmi``/``ari`` when labels exist.
    """

    def __init__(self):
        super().__init__()
        self._eval_outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    def evaluate_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

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
        log_p, cluster = self.evaluate_batch(x)
        self._eval_outputs.append((log_p.double(), cluster, y))

    def _eval_epoch_end(self, stage: str) -> None:
        if not self._eval_outputs:
            return
        log_p, cluster, y = (gather_uneven(torch.cat(parts)) for parts in zip(*self._eval_outputs))
        self._eval_outputs.clear()
        metrics = {f"{stage}/nll": float(-log_p.mean())}
        if self.trainer.sanity_checking:
            return
        if y.numel() and int(y.min()) >= 0:
            for name, value in clustering_metrics(y.cpu().numpy(), cluster.cpu().numpy()).items():
                metrics[f"{stage}/{name}"] = value
        metrics.update(self.extra_eval_metrics(stage, log_p))
        # identical on every rank (already gathered): no further sync needed
        self.log_dict(metrics, sync_dist=False, rank_zero_only=False)

    def extra_eval_metrics(self, stage: str, log_p: Tensor) -> dict[str, float]:
        return {}
