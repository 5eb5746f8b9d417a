"""An objective's pre-training stage (VaDE's autoencoder), run before its first training step.

It runs inside ``on_fit_start``, where Lightning has already wrapped the model for DDP, so it
cannot lean on DDP's gradient hooks (they act only on the wrapper's forward).  Each process
trains on its shard of the shuffled training split, as the main loop does, and the
gradients are averaged over the processes after every backward pass: two ranks with batch
B/2 take the steps of one process with batch B, and every rank ends with the same
autoencoder.  The result is cached on disk by everything that shapes it (the training split's
values by their digest, the networks, the stage's settings, the seed), so a sweep over K
or the covariance type pre-trains once: the jobs of a parallel sweep take turns on a lock
file beside the cache, the first pre-trains, the others wait and load its file, which is
written whole (a temporary file renamed into place).  Under DDP only rank 0 of a job takes
that lock and its ranks follow its decision, so they never wait on each other's lock.
The stage trains as the model does: with the optimiser's ``fused`` kernel and under the
trainer's bfloat16 autocast where the run asks for them (``FastPath``).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..data.augment import random_affine
from ..lifecycle import stop_point
from ..objectives.base import Objective

log = logging.getLogger(__name__)
# the mixture is fitted after pre-training, per K and covariance type: not trained, not cached
MIXTURE_PREFIX = "parameter_generator."


@dataclass(frozen=True)
class FastPath:
    """The model's speed settings the stage copies: Adam's ``fused`` kernel (the model's
    ``optimizer.fused``) and ``trainer.precision``.  Both change the last digits, so a
    non-default one is part of the cache key."""

    fused: bool | None = None
    precision: str = "32-true"

    def key(self) -> tuple:
        return () if self == FastPath() else (self.fused, self.precision)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")


def pretrain(objective: Objective, datamodule, device: torch.device, seed: int, is_global_zero: bool,
             fast: FastPath = FastPath(), restart: int = 0) -> None:
    """Train the objective's networks, without its mixture, on ``objective.pretrain_loss``;
    load them from the cache instead where an identical stage ran before (``restart``: which
    of the stage's restarts, each cached on its own)."""
    cache = cache_path(objective, datamodule, seed, fast, restart)
    with cache_turn(cache, device, is_global_zero) as cached:
        if cached:
            state = torch.load(cache, map_location=device)
            objective.load_state_dict({k: v for k, v in state.items() if not k.startswith(MIXTURE_PREFIX)},
                                      strict=False)
            log.info("pre-trained autoencoder loaded from %s", cache)
            return
        train(objective, datamodule, device, fast, restart)
        if cache is not None and is_global_zero:
            state = {k: v for k, v in objective.state_dict().items() if not k.startswith(MIXTURE_PREFIX)}
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, cache)  # a reader sees no file or the whole file


LOAD, TRAIN, WAIT = 0, 1, 2


@contextmanager
def cache_turn(cache: Path | None, device: torch.device, is_global_zero: bool):
    """Yields whether to load the cache (else pre-train, holding the lock until the cache is
    written).  Rank 0 decides every second and broadcasts it, so the ranks of one job agree
    and none blocks in a collective for as long as another job pre-trains."""
    if cache is None:
        yield False
        return
    lock = None
    try:
        for turn in itertools.count():
            decision = WAIT
            if is_global_zero:
                decision, lock = _decide(cache)
            decision = _from_rank_zero(decision, device)
            if decision != WAIT:
                break
            if turn == 0 and is_global_zero:
                log.info("waiting for %s: another job is pre-training it", cache)
            time.sleep(1.0)
        yield decision == LOAD
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def _decide(cache: Path):
    """(LOAD, None) if the cache is there, (TRAIN, held lock) for the job that pre-trains it,
    (WAIT, None) while another job does."""
    if cache.exists():
        return LOAD, None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache.with_suffix(".lock"), "a")
    except OSError:  # a read-only folder: no lock, and pre-training cannot write there either
        return TRAIN, None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return WAIT, None
    if cache.exists():  # written while this job waited
        lock.close()
        return LOAD, None
    return TRAIN, lock


def _from_rank_zero(decision: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decision
    t = torch.tensor([decision], device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def train(objective: Objective, datamodule, device: torch.device, fast: FastPath, restart: int = 0) -> None:
    stage = objective.pretraining
    params = [p for n, p in objective.named_parameters() if not n.startswith(MIXTURE_PREFIX)]
    opt = torch.optim.Adam(params, lr=stage.lr, fused=fast.fused)
    loader = datamodule.train_dataloader()
    augment = augmentation(stage.rotation, stage.shift, getattr(datamodule, "image_shape", None))
    for epoch in range(stage.epochs):
        total = torch.zeros((), dtype=torch.float64, device=device)  # read once an epoch: no sync per step
        for x, _ in loader:
            stop_point()
            with fast.autocast(device):
                loss = objective.pretrain_loss(augment(x.to(device)))
            opt.zero_grad()
            loss.backward()
            average_gradients_over_processes(params)
            opt.step()
            total += loss.detach()
        which = f" (autoencoder {restart + 1} of {stage.restarts})" if stage.restarts > 1 else ""
        log.info("pre-training epoch %d of %d%s: reconstruction %.4f", epoch + 1, stage.epochs, which,
                 float(total) / max(1, len(loader)))


def average_gradients_over_processes(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes, in one all-reduce.  Every rank
    runs the same graph, so the same parameters have gradients on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with_grad = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(with_grad, torch.split(flat, [p.numel() for p in with_grad])):
        p.grad.copy_(g.view_as(p.grad))


def augmentation(rotation: float, shift: float, image_shape):
    if not rotation and not shift:
        return lambda x: x
    return lambda x: random_affine(x, image_shape, rotation, shift)


def cache_path(objective: Objective, datamodule, seed: int, fast: FastPath = FastPath(),
               restart: int = 0) -> Path | None:
    stage = objective.pretraining
    if not stage.cache_dir:
        return None
    backbone = objective.backbone
    digest = datamodule.train_digest() if hasattr(datamodule, "train_digest") else None
    key = repr((type(backbone).__name__, digest, datamodule.n_train, backbone.out_dim, sum(p.numel() for p in backbone.parameters()),
                stage.epochs, stage.lr, seed, *stage.settings, stage.rotation, stage.shift, *fast.key(),
                *(("restart", restart) if restart else ())))
    return Path(stage.cache_dir) / f"pretrain-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
