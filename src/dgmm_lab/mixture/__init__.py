"""Gaussian-mixture mathematics in pure torch: no Lightning, no Hydra."""

from .covariance_types import COVARIANCE_TYPES

__all__ = ["COVARIANCE_TYPES", "MixtureDensity"]


def __getattr__(name: str):
    if name == "MixtureDensity":  # torch loads on first use (see dgmm_lab/__init__.py)
        from .density import MixtureDensity
        return MixtureDensity
    raise AttributeError(f"module 'dgmm_lab.mixture' has no attribute {name!r}")
