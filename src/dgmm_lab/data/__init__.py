"""LightningDataModules: synthetic shapes with known structure, MNIST."""

from .base import TensorDataModule
from .mnist import MNISTDataModule
from .synthetic import SyntheticDataModule

__all__ = ["MNISTDataModule", "SyntheticDataModule", "TensorDataModule"]
