"""Which components of a fitted mixture the data does not determine.

A covariance from n points has rank at most n - 1, so a full covariance in D dimensions
needs more than D points; below that (or when the points lie on a subspace, as with a
constant feature) the covariance is singular and only ``reg_covar`` keeps it invertible.
The density then grows without bound along the missing directions: 20 samples in 100
dimensions gave a train log-likelihood of +560 per sample and a test NLL of 7.5e7.
"""

from __future__ import annotations

import math

from torch import Tensor

from .density import covariance_eigenvalues

# an eigenvalue below this multiple of reg_covar is essentially reg_covar itself: the data
# put (next to) no variance in that direction
FLOOR_FACTOR = 1.5
# a reg_covar of this share of the features' mean variance or more is regularisation on
# purpose (the covariances shrink towards it), not a floor holding up a singular estimate; the
# variance measured includes reg_covar, so the suggested value (about the data's variance,
# rounded to one digit) stays above it
DELIBERATE_SHARE = 0.25


def points_needed(dim: int, covariance_type: str) -> int:
    """Points one component needs for a non-singular covariance of this type (full: D + 1,
    diag and spherical: 2; a tied covariance pools every point instead)."""
    return dim + 1 if covariance_type in ("full", "tied") else 2


def degenerate_components(weights: Tensor, covariances: Tensor, n_samples: int, covariance_type: str,
                          reg_covar: float, variance: float) -> dict[int, tuple[str, str]]:
    """{component: (kind, why)} for the components whose covariance the data does not
    determine; kind 'points' (too few of them) or 'floor' (a direction without variance:
    points on a subspace, a constant feature).  None while reg_covar is a sizeable share of
    the features' mean ``variance``: then it regularises on purpose.

    weights (K,), covariances in the type's shape (full (K, D, D), tied (D, D), diag (K, D),
    spherical (K,)); n_samples: the training points the weights are fractions of."""
    if reg_covar >= DELIBERATE_SHARE * variance:
        return {}
    k = weights.shape[0]
    eig = covariance_eigenvalues(covariances.double(), covariance_type)
    dim = eig.shape[-1] if covariance_type != "spherical" else 1
    if covariance_type == "tied":
        eig = eig.expand(k, -1)  # one covariance, shared: degenerate for every component alike
    elif covariance_type == "spherical":
        eig = eig.unsqueeze(-1)
    floor = FLOOR_FACTOR * reg_covar + 1e-12 * eig.max(-1).values
    counts = weights.double() * n_samples
    needed = points_needed(dim, covariance_type)
    why = {}
    for j in range(k):
        if covariance_type == "tied" and n_samples < k + dim:
            why[j] = ("points", f"{n_samples} points for {k} means and a {dim}-dimensional shared covariance")
        elif covariance_type != "tied" and counts[j] < needed:
            why[j] = ("points", f"{float(counts[j]):.3g} points, a {covariance_type} covariance in {dim} "
                                f"dimensions needs {needed}")
        elif eig[j].min() <= floor[j]:
            why[j] = ("floor", f"smallest covariance eigenvalue {float(eig[j].min()):.3g} at the model.reg_covar floor")
    return why


def remedy(kinds: set[str], covariance_type: str, variance: float) -> str:
    """What to change, for the kinds of degeneracy found (``degenerate_components``);
    ``variance``: the features' mean variance (``mean_feature_variance``)."""
    steps = []
    if "points" in kinds:
        steps += ["covariance=diag"] if covariance_type in ("full", "tied") else []
        steps += ["fewer components (k)"]
    if "floor" in kinds:
        steps.append("drop constant or duplicated feature columns")
    # 20 x 100 full: test NLL 7.3e3 at 1% of the variance, 659 at 10%, 167 at 100% (diag: 186)
    suggestion = float(f"{variance:.0e}") if math.isfinite(variance) and variance > 0 else 1.0
    return ", ".join(steps + [f"or model.reg_covar={suggestion:g} (about the features' variance: the "
                              "covariances then shrink towards it)"])


def mean_feature_variance(weights: Tensor, means: Tensor, covariances: Tensor, covariance_type: str) -> float:
    """The mixture's variance of each feature (within plus between components), averaged
    over the features: the data's scale, without a pass over the data."""
    w = weights.double()
    variances = {"full": lambda c: c.diagonal(dim1=-2, dim2=-1), "tied": lambda c: c.diagonal().expand_as(means),
                 "diag": lambda c: c, "spherical": lambda c: c.unsqueeze(-1).expand_as(means)}[covariance_type]
    inner = (w.unsqueeze(-1) * variances(covariances.double())).sum(0)
    centre = w @ means.double()
    spread = w @ (means.double() - centre).pow(2)
    return float((inner + spread).mean())


def too_few_points(n_train: int, n_components: int, dim: int, covariance_type: str) -> bool:
    """Whether a fit with these sizes cannot determine its covariances on average: fewer
    training rows per component than a full covariance needs (D + 1), or for tied fewer than
    K + D in all; diagonal and spherical ones need two points per component."""
    if covariance_type == "full":
        return n_train / n_components < dim + 1
    if covariance_type == "tied":
        return n_train < n_components + dim
    return n_train / n_components < 2


def automatic_reg_covar(z: Tensor, n_train: int, n_components: int, covariance_type: str,
                        floor: float = 1e-6) -> tuple[float, str | None]:
    """``model.reg_covar=auto``: the fixed ``floor`` where the data determines the covariances;
    where it does not (``too_few_points``) the Ledoit-Wolf shrinkage of the features'
    covariance toward their mean variance, as a ridge: reg = alpha * mean variance, which
    pulls each component's covariance toward the data's own scale.  z (N, D) a sample of the
    training features.  Returns (reg_covar, why) with why None where the floor was kept."""
    d = z.shape[1]
    if not too_few_points(n_train, n_components, d, covariance_type):
        return floor, None
    from sklearn.covariance import ledoit_wolf_shrinkage  # a third of a second of start-up: only here

    x = z.double().cpu().numpy()
    alpha = float(ledoit_wolf_shrinkage(x))
    variance = float(x.var(axis=0).mean())
    reg = max(floor, alpha * variance)
    return reg, (f"{n_train} training rows for {n_components} {covariance_type} components in {d} dimensions: "
                 f"Ledoit-Wolf shrinkage {alpha:.3g} of the features' mean variance {variance:.3g}")
