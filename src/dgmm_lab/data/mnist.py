"""MNIST through ``torchvision.datasets.MNIST``: train/val from the 60k, the 10k as test (or,
``transductive``, all 70k images trained on and scored)."""

from __future__ import annotations

import fcntl
import hashlib
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ..config import ConfigError
from .base import TensorDataModule
from .transform import InputTransform

RAW_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SCALINGS = ("unit", "standardize")
# sizes of the extracted files: a 16-byte (images) or 8-byte (labels) header, then one byte
# per pixel or label
EXTRACTED_BYTES = {"train-images-idx3-ubyte": 16 + 60000 * 784, "train-labels-idx1-ubyte": 8 + 60000,
                   "t10k-images-idx3-ubyte": 16 + 10000 * 784, "t10k-labels-idx1-ubyte": 8 + 10000}


class MNISTDataModule(TensorDataModule):
    """``data_dir`` holds ``MNIST/raw/*.gz``; it may be read-only: the raw files are then
    linked into ``cache_dir`` where torchvision verifies (md5) and extracts them.

    ``scaling``: ``unit`` ([0, 1]) or ``standardize`` (zero mean, unit variance over the
    training pixels).  ``limit_train`` keeps the first n training images (quick runs).
    ``transductive``: the protocol of the published VaDE, DEC and DEC-DA tables: the model
    trains on every image (training, validation and test) and the test split is all of them,
    so ``test/accuracy`` is the clustering accuracy on the 70k; validation stays the 5k.
    """

    image_shape = (1, 28, 28)
    offset, scale = 0.0, 1.0  # standardisation, fitted on the training pixels

    def __init__(self, data_dir: str, cache_dir: str | None = None, flatten: bool = False,
                 scaling: str = "unit", val_size: int = 5000, limit_train: int | None = None,
                 limit_test: int | None = None, transductive: bool = False, download: bool = True, **kwargs):
        super().__init__(**kwargs)
        if scaling not in SCALINGS:
            raise ValueError(f"data.scaling={scaling!r} is not allowed; allowed: {', '.join(SCALINGS)}")
        self.data_dir, self.cache_dir = Path(data_dir), Path(cache_dir or data_dir)
        self.flatten, self.scaling, self.val_size = flatten, scaling, val_size
        self.limit_train, self.limit_test, self.download = limit_train, limit_test, download
        if not isinstance(transductive, bool):  # 1 and 0 too: `1 in (True, False)` holds
            raise ValueError(f"data.transductive={transductive!r} is not allowed; allowed: true, false")
        self.transductive = transductive

    def _root(self) -> Path:
        """Where torchvision should look: data_dir if writable, else a cache of links."""
        raw = self.data_dir / "MNIST" / "raw"
        if self.cache_dir == self.data_dir or not all((raw / f).exists() for f in RAW_FILES):
            return self.data_dir
        cache_raw = self.cache_dir / "MNIST" / "raw"
        cache_raw.mkdir(parents=True, exist_ok=True)
        for f in RAW_FILES:
            link = cache_raw / f
            if not link.exists():
                link.symlink_to((raw / f).resolve())
        return self.cache_dir

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        from torchvision.datasets import MNIST

        try:
            with _exclusive(self.cache_dir):
                ds = MNIST(root=str(self._root()), train=train, download=self.download)
        except (RuntimeError, OSError) as err:
            damaged = damaged_raw_file([self.data_dir / "MNIST" / "raw", self.cache_dir / "MNIST" / "raw"])
            if damaged:
                raise ConfigError(f"data.data_dir={str(self.data_dir)!r}: {damaged}; allowed: the original "
                                  "files (delete a damaged one to have it downloaded again)") from None
            raise FileNotFoundError(
                f"MNIST not found and not downloadable ({err}); put the four files "
                f"{', '.join(RAW_FILES)} into {self.data_dir / 'MNIST' / 'raw'} "
                "(or set DGMM_LAB_DATA_DIR to a folder holding MNIST/raw/)"
            ) from None
        return ds.data, ds.targets

    def make_splits(self) -> dict[str, TensorDataset]:
        x_all, y_all = self._read(train=True)
        x_test, y_test = self._read(train=False)
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[:self.val_size], order[self.val_size:]
        if self.limit_train:
            train_idx = train_idx[:self.limit_train]
            val_idx = val_idx[:max(1, self.limit_train // 5)]
        if self.limit_test:
            x_test, y_test = x_test[:self.limit_test], y_test[:self.limit_test]
        x_train, y_train = x_all[train_idx], y_all[train_idx]
        if self.transductive:
            x_train, y_train = torch.cat([x_train, x_all[val_idx], x_test]), torch.cat([y_train, y_all[val_idx], y_test])
        if self.scaling == "standardize":
            pixels = self._scale(x_train)
            self.offset, self.scale = float(pixels.mean()), float(pixels.std())

        def prep(x: Tensor) -> Tensor:
            return (self._scale(x) - self.offset) / self.scale

        train = TensorDataset(prep(x_train), y_train)
        return {"train": train, "val": TensorDataset(prep(x_all[val_idx]), y_all[val_idx]),
                "test": train if self.transductive else TensorDataset(prep(x_test), y_test)}

    def describe_splits(self) -> str:
        line = super().describe_splits()
        return f"{line} (transductive: the test split is the training split)" if self.transductive else line

    def _scale(self, x: Tensor) -> Tensor:
        x = x.float().div(255.0).unsqueeze(1)
        return x.flatten(1) if self.flatten else x

    def input_transform(self) -> InputTransform:
        """Grey levels 0-255 (any shape with 28 x 28 values per image) -> the model's inputs."""
        self.setup()
        return InputTransform(self.input_shape, self.offset, self.scale, 1.0 / 255.0)

    @property
    def pixel_scale(self) -> float:
        """Size of one grey level in the data's units (for dequantisation and bits/dim)."""
        return 1.0 / 255.0 / self.scale


@contextmanager
def _exclusive(folder: Path):
    """One process at a time links and extracts the raw files: parallel jobs of a sweep
    with a cold cache otherwise read each other's half-written files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".mnist.lock", "w")
    except OSError:  # a read-only folder: nothing is written there, nothing to guard
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def damaged_raw_file(raw_dirs: list[Path]) -> str | None:
    """What is wrong with the first MNIST file in ``raw_dirs`` that is there but damaged (a
    ``.gz`` whose md5 is not torchvision's, an extracted file of the wrong size), or None.
    Asked only after torchvision failed: it then says "not found" for a file that is there."""
    from torchvision.datasets import MNIST

    md5s = dict(MNIST.resources)
    for raw in dict.fromkeys(raw_dirs):  # data_dir and cache_dir may be one folder
        for name in RAW_FILES:
            path = raw / name
            if path.is_file() and (digest := _md5(path)) != md5s[name]:
                return (f"MNIST file {path} is corrupt: its md5 checksum {digest} is not torchvision's {md5s[name]} "
                        f"({path.stat().st_size} bytes; truncated or not the original)")
            extracted = raw / name.removesuffix(".gz")
            if extracted.is_file() and (size := extracted.stat().st_size) != EXTRACTED_BYTES[extracted.name]:
                return (f"MNIST file {extracted} is damaged: {size} bytes, the original has "
                        f"{EXTRACTED_BYTES[extracted.name]}")
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
