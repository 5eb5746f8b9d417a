"""Batch-level loading: each batch is one gather of the split's tensors, in the sampler's
order, with the values a per-sample DataLoader (``__getitem__`` + ``default_collate``) gives."""

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dgmm_lab.data import SyntheticDataModule
from dgmm_lab.data.base import BatchRows


def per_sample_batches(dataset, epoch: int, batch_size: int, shuffle: bool, seed: int):
    sampler = DistributedSampler(dataset, 1, 0, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return list(DataLoader(TensorDataset(*dataset.tensors), sampler=sampler, batch_size=batch_size))


def test_batches_equal_a_per_sample_loader_and_are_gathered_whole(monkeypatch):
    data = SyntheticDataModule(n_samples=1000, batch_size=64, split_seed=3)
    data.setup()
    per_row_calls = []
    monkeypatch.setattr(BatchRows, "__getitem__", lambda self, i: per_row_calls.append(i))
    for epoch in (0, 1):
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)  # as Lightning does each epoch
        ours = list(loader)
        expected = per_sample_batches(data.splits["train"], epoch, 64, True, 3)
        assert len(ours) == len(expected) == -(-len(data.splits["train"]) // 64)
        for (x, y), (x_ref, y_ref) in zip(ours, expected):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and x.dtype == x_ref.dtype
    assert not torch.equal(ours[0][0], per_sample_batches(data.splits["train"], 0, 64, True, 3)[0][0])
    val = list(data.val_dataloader())
    assert torch.equal(torch.cat([x for x, _ in val]), data.splits["val"].tensors[0])  # in order, every row once
    assert per_row_calls == []


def test_on_a_cpu_trainer_the_splits_are_views_whatever_on_device_says():
    for flag in (True, False, "auto"):
        data = SyntheticDataModule(n_samples=300, on_device=flag)
        data.setup()
        rows = data._rows("train", torch.device("cpu"))
        assert rows.tensors[0].data_ptr() == data.splits["train"].tensors[0].data_ptr()
