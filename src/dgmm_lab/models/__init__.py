"""LightningModules: the classical EM-GMM and the deep GMM."""

from .deep_gmm import DeepGMM
from .em_gmm import EMGMM

__all__ = ["DeepGMM", "EMGMM"]
