"""The rows of X as EM's passes read them: a tensor in memory, or a memory-mapped array
(an ``np.memmap``, ``np.load(path, mmap_mode="r")`` or the path of a ``.npy`` file) read
lazily, one batch at a time.

A pass over a memory map touches every page of the file, and touched pages count in the
process's resident memory until the kernel needs them back: a pass over a 3 GB file would
look like 3 GB of memory, and push out whatever else the machine holds.  So each batch is
copied out of the map and its pages are then released (``madvise(MADV_DONTNEED)``; the
file's data stay in the page cache, a later pass reads them from there).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from os import PathLike

import numpy as np
import torch
from torch import Tensor

from .kmeans import CHUNK


class MappedRows:
    """A 2-d memory-mapped array (N, D), C- or Fortran-ordered, that yields torch batches on
    ``device``.

    Only float32 and float64 arrays are read as they are; other dtypes are converted batch by
    batch to float64 (as scikit-learn converts them)."""

    def __init__(self, array: np.memmap, device="cpu"):
        if array.ndim != 2:
            raise ValueError(f"a memory-mapped X must be 2-d (n_samples, n_features); got shape {array.shape}")
        n, d = array.shape
        self.column_major = n > 1 and d > 1 and array.strides == (array.itemsize, n * array.itemsize)
        if n and d > 1 and array.strides[1] != array.itemsize and not self.column_major:
            raise ValueError(f"a memory-mapped X must be a whole C- or Fortran-ordered array to be read a batch at "
                             f"a time; its strides are {array.strides} (a strided view): save it with "
                             "np.save(path, np.ascontiguousarray(X))")
        self.array, self.device = array, torch.device(device)
        self.shape = tuple(array.shape)
        self.dtype = torch.float32 if array.dtype == np.float32 else torch.float64
        self._map = underlying_map(array)
        self._checked = False  # every value was seen finite in a whole pass: later passes skip the check

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, rows: int) -> Iterator[Tensor]:
        for start in range(0, self.shape[0], rows):
            stop = min(start + rows, self.shape[0])
            yield self._copy(slice(start, stop), start, stop)
        self._checked = True

    def take(self, indices: Tensor, rows: int = CHUNK) -> Tensor:
        """The rows at sorted ``indices`` (M,) -> (M, D), gathered one block of the file at a
        time (a direct gather would leave every page it touched resident)."""
        idx = indices.cpu().numpy()
        parts = []
        for start in range(0, self.shape[0], rows):
            lo, hi = np.searchsorted(idx, [start, start + rows])
            if hi > lo:
                parts.append(self._copy(idx[lo:hi], start, min(start + rows, self.shape[0])))
        return torch.cat(parts) if parts else torch.empty(0, self.shape[1], dtype=self.dtype, device=self.device)

    def _copy(self, which, start: int, stop: int) -> Tensor:
        block = np.array(self.array[which], dtype=_numpy(self.dtype))
        self._release(start, stop)
        # scikit-learn checks the whole X up front; a mapped X is checked as it is first read
        bad = None if self._checked else ~np.isfinite(block)
        if bad is not None and bad.any():
            first = int(bad.any(1).nonzero()[0][0])
            row = start + first if isinstance(which, slice) else int(which[first])
            raise ValueError(f"Input X contains NaN or infinity (first at row {row})")
        return torch.from_numpy(block).to(self.device)

    def _release(self, start: int, stop: int) -> None:
        """Drop rows start:stop's pages from this process (not from the page cache)."""
        if self._map is None:
            return
        base = np.frombuffer(self._map, dtype=np.uint8).ctypes.data
        rows = self.array[start:stop]
        if self.column_major:  # the rows are a run in each column
            runs = [(rows[:, j].ctypes.data - base, (stop - start) * self.array.itemsize) for j in range(rows.shape[1])]
        else:
            runs = [(rows.ctypes.data - base, (stop - start) * self.array.strides[0])]
        for first, length in runs:
            page = (first // mmap.PAGESIZE) * mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, page, min(first + length - page, len(self._map) - page))


def underlying_map(array: np.ndarray) -> mmap.mmap | None:
    """The shared mmap object under ``array``; None for a copy-on-write map (its written
    pages exist only in this process: releasing them would lose the writes)."""
    if getattr(array, "mode", None) == "c":
        return None
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base if hasattr(mmap, "MADV_DONTNEED") else None


def _numpy(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


def mapped(X, device="cpu") -> MappedRows | None:
    """X as ``MappedRows`` when it is memory-mapped or names a ``.npy`` file; None otherwise."""
    if isinstance(X, (str, PathLike)):
        X = _load_npy(X)
    if isinstance(X, np.memmap):
        return MappedRows(X, device)
    return None


def _load_npy(path) -> np.memmap:
    if not str(path).lower().endswith(".npy"):
        raise ValueError(f"X={str(path)!r}: a path must name a .npy file (np.save); load other formats "
                         "into an array first")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"X={str(path)!r} is not a .npy file (no NUMPY header)")
    return np.load(path, mmap_mode="r")


def batches(x: Tensor | MappedRows, rows: int) -> Iterator[Tensor]:
    """The rows of x (N, D), ``rows`` at a time."""
    return x.batches(rows) if isinstance(x, MappedRows) else iter(torch.split(x, rows))


def take(x: Tensor | MappedRows, indices: Tensor) -> Tensor:
    """The rows of x at sorted ``indices`` (M,) -> (M, D)."""
    return x.take(indices) if isinstance(x, MappedRows) else x[indices]
