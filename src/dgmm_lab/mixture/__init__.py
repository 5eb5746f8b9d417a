"""Gaussian-mixture mathematics in pure torch: no Lightning, no Hydra."""

from .density import COVARIANCE_TYPES, MixtureDensity

__all__ = ["COVARIANCE_TYPES", "MixtureDensity"]
