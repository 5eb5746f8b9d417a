"""dgmm_lab: deep and classical Gaussian mixture models, trained with Lightning, swept with Hydra."""

from .mixture.density import MixtureDensity
from .mixture.estimator import GaussianMixture

__version__ = "0.1.0"
__all__ = ["GaussianMixture", "MixtureDensity", "__version__"]
