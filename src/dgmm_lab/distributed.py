"""Multi-process helpers shared by both models, and the DDP strategy they run under."""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy as LightningDDPStrategy
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_processes(tensors: list[Tensor]) -> None:
    """In-place sums over processes of several tensors with one all-reduce of one flat
    vector (EM's statistics, DAGMM's training-set moments)."""
    if not is_distributed():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_with_grad(t: Tensor) -> Tensor:
    """Sum over processes that gradients flow back through: DAGMM's batch moments."""
    if is_distributed():
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


def gather_uneven(t: Tensor) -> Tensor:
    """Concatenate a tensor from all processes; ranks may hold different lengths."""
    if not is_distributed():
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


class DDPStrategy(LightningDDPStrategy):
    """Lightning's DDP, except that a model with nothing to train (the EM-GMM, whose
    parameters are buffers updated by its own all-reduce) is not wrapped:
    DistributedDataParallel refuses such modules."""

    def _setup_model(self, model):
        if not any(p.requires_grad for p in model.parameters()):
            return model
        return super()._setup_model(model)
