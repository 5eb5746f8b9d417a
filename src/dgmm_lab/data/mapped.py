"""A split of a ``.npy`` file read through a memory map (``data.memory_map``): rows are read
when a batch asks for them, never the whole file.

A split is a list of file rows in the split's order (the seeded partition of
``TensorDataModule.split_indices``) plus the feature columns and the training split's
scaling; a batch of split positions is read from the file in row order, scaled in float64
as the in-memory path scales the whole split, and answered in float32.  Pages touched by
the reads count in the process's resident memory until released, so the map is released
(``madvise(MADV_DONTNEED)``; the data stay in the page cache) whenever about
``RELEASE_BYTES`` of it may have been mapped.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..mixture.rows import underlying_map

RELEASE_BYTES = 64 * 2**20
# a page fault on a cached file maps the pages around it too (fault-around, and whole large
# folios of the page cache; madvise(MADV_RANDOM) stops neither): 20,000 scattered rows of a
# 2 GB file mapped 1.9 GB of it, and 1024 rows at a time still 0.87 GB.  Scattered rows are
# therefore counted at 2 MiB each: the map is released every 32 of them (65,536 scattered
# rows in 40 ms, against 79 ms read one pread at a time)
MAPPED_PER_ROW = 2 * 2**20
# rows at a time in the whole-file passes (checks, scaling)
PASS_ROWS = 2**16


class FileRows:
    """The memory-mapped 2-d array of a ``.npy`` file (N, C) and the release of its pages."""

    def __init__(self, array: np.memmap):
        self.array = array
        self._map = underlying_map(array)
        self._touched = 0
        self.row_bytes = array.strides[0]

    def read(self, rows: np.ndarray | slice, columns: list[int] | None = None) -> np.ndarray:
        """Rows (sorted indices or a slice) and columns of the file as a float64 copy."""
        if isinstance(rows, slice):
            return self._copy(rows, columns, (rows.stop - rows.start) * self.row_bytes)
        step = RELEASE_BYTES // MAPPED_PER_ROW
        parts = [self._copy(rows[i:i + step], columns, len(rows[i:i + step]) * MAPPED_PER_ROW)
                 for i in range(0, len(rows), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _copy(self, rows, columns: list[int] | None, touched: int) -> np.ndarray:
        block = self.array[rows]
        out = np.array(block[:, columns] if columns is not None else block, dtype=np.float64)
        self._touched += touched
        if self._touched >= RELEASE_BYTES:
            self.release()
        return out

    def release(self) -> None:
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED, 0, len(self._map))
        self._touched = 0

    def passes(self, columns: list[int] | None = None, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """The file's rows (or the sorted ``rows``) in order, ``PASS_ROWS`` at a time, float64."""
        n = len(self.array) if rows is None else len(rows)
        for start in range(0, n, PASS_ROWS):
            which = slice(start, min(n, start + PASS_ROWS)) if rows is None else rows[start:start + PASS_ROWS]
            yield self.read(which, columns)
        self.release()


class MappedSplit:
    """One split's features: file rows ``rows`` (M,) in the split's order, columns ``columns``
    (None: all), scaled as (x - offset) / scale.  Indexing answers (len, D) float32 tensors;
    ``batches`` reads the split (or a process's share of it) a batch at a time."""

    def __init__(self, file: FileRows, rows: np.ndarray, columns: list[int] | None, offset: Tensor, scale: Tensor):
        self.file, self.rows, self.columns = file, rows, columns
        self.offset, self.scale = offset.double(), scale.double()
        self.shape = (len(rows), len(offset))
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def size(self, dim: int) -> int:
        return self.shape[dim]

    def digest(self) -> str:
        """What identifies the split without reading it: the file (path, size, modification
        time), its rows, columns and scaling."""
        path = Path(self.file.array.filename)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, self.columns,
               self.offset.tolist(), self.scale.tolist())
        return hashlib.sha1(repr(key).encode() + np.ascontiguousarray(self.rows).tobytes()).hexdigest()

    def numpy(self) -> np.ndarray:
        """The whole split, read into memory."""
        return self[:].numpy()

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, (int, np.integer)):
            return self.read(np.array([index]))[0]
        positions = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        return self.read(positions)

    def read(self, positions: np.ndarray) -> Tensor:
        """The split's samples at ``positions`` (B,) -> (B, D) float32, in that order."""
        file_rows = self.rows[positions]
        order = np.argsort(file_rows, kind="stable")
        block = np.empty((len(file_rows), self.shape[1]), dtype=np.float64)
        block[order] = self.file.read(file_rows[order], self.columns)
        return torch.from_numpy(block).sub_(self.offset).div_(self.scale).float()

    def batches(self, size: int, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Samples rank, rank + world, ... in order, ``size`` at a time (as
        ``torch.split(x[rank::world], size)`` of the split in memory)."""
        positions = np.arange(rank, len(self), world)
        for start in range(0, len(positions), size):
            yield self.read(positions[start:start + size])


def row_batches(x: Tensor | MappedSplit, size: int, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
    """A split's features, in memory or mapped, ``size`` rows at a time (process ``rank``'s share)."""
    return x.batches(size, rank, world) if isinstance(x, MappedSplit) else iter(torch.split(x[rank::world], size))
