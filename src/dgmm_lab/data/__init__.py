"""LightningDataModules: synthetic shapes with known structure, MNIST (whole and halved), arrays, regression."""

from .arrays import ArrayDataModule
from .base import TensorDataModule
from .mnist import MNISTDataModule
from .mnist_halves import MNISTHalvesDataModule
from .synthetic import SyntheticDataModule

__all__ = ["ArrayDataModule", "MNISTDataModule", "MNISTHalvesDataModule", "SyntheticDataModule", "TensorDataModule"]
