"""Principled training objectives for the deep GMM; each owns its parameter generator and
implements the protocol of ``base.Objective`` (conf/objective/ holds their settings).

- ``nll``: exact likelihood (identity/PCA features, or a flow with its log-determinant)
- ``dagmm``: DAGMM (Zong et al. 2018): amortised memberships, reconstruction, covariance penalty
- ``vade``: VaDE (Jiang et al. 2017): ELBO with a global mixture prior
- ``mdn``: mixture density network (Bishop 1994): a mixture over a target y given x
"""

from .base import Objective, Pretraining
from .dagmm import DAGMMObjective
from .mdn import MDNObjective
from .nll import NLLObjective
from .vade import VaDEObjective

__all__ = ["DAGMMObjective", "MDNObjective", "NLLObjective", "Objective", "Pretraining", "VaDEObjective"]
