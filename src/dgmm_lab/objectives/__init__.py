"""Principled training objectives for the deep GMM; each owns its parameter generator.

- ``nll``: exact likelihood (identity/PCA features, or a flow with its log-determinant)
- ``dagmm``: DAGMM (Zong et al. 2018): amortised memberships, reconstruction, covariance penalty
- ``vade``: VaDE (Jiang et al. 2017): ELBO with a global mixture prior
- ``mdn``: mixture density network (Bishop 1994): a mixture over a target y given x
"""

from .dagmm import DAGMMObjective
from .mdn import MDNObjective
from .nll import NLLObjective
from .vade import VaDEObjective

OBJECTIVES = {"nll": NLLObjective, "dagmm": DAGMMObjective, "vade": VaDEObjective, "mdn": MDNObjective}
# which feature extractors make each objective well-posed
COMPATIBLE_BACKBONES = {"nll": ("identity", "pca", "flow"),
                        "dagmm": ("mlp", "conv", "resnet"),
                        "vade": ("mlp", "conv", "resnet"),
                        "mdn": ("mlp", "identity", "pca", "conv", "resnet")}

__all__ = ["COMPATIBLE_BACKBONES", "OBJECTIVES", "DAGMMObjective", "MDNObjective", "NLLObjective", "VaDEObjective"]
