"""dgmm_lab: deep and classical Gaussian mixture models, trained with Lightning, swept with Hydra."""

__version__ = "0.1.0"
__all__ = ["GaussianMixture", "MixtureDensity", "load", "__version__"]


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str):
    # imported on first use: the command line checks its arguments before torch loads
    if name == "GaussianMixture":
        from .mixture.estimator import GaussianMixture
        return GaussianMixture
    if name == "load":
        from .trained import load
        return load
    if name == "MixtureDensity":
        from .mixture.density import MixtureDensity
        return MixtureDensity
    raise AttributeError(f"module 'dgmm_lab' has no attribute {name!r}")
