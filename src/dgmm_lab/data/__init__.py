"""LightningDataModules: synthetic shapes with known structure, MNIST."""

from .arrays import ArrayDataModule
from .base import TensorDataModule
from .mnist import MNISTDataModule
from .synthetic import SyntheticDataModule

__all__ = ["ArrayDataModule", "MNISTDataModule", "SyntheticDataModule", "TensorDataModule"]
