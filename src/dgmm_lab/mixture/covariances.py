"""Covariance and precision helpers that EM, the parameter generators and the objectives share.

Shapes are scikit-learn's, per covariance type: full (K, D, D), tied (D, D), diag (K, D),
spherical (K,), for covariances and for precision factors alike (see ``density.py``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .density import MixtureDensity, precision_cholesky_from_covariance

log = logging.getLogger(__name__)


def stable_precision_cholesky(cov: Tensor, covariance_type: str, reg_covar: float,
                              retries: int = 4) -> tuple[Tensor, Tensor]:
    """(covariances, their precision factors), same shapes.  On a failed Cholesky add growing
    jitter to the diagonal (logged), then give up with an error that names the component
    and the setting to raise.  Differentiable (DAGMM's moments pass through it)."""
    jitter = max(reg_covar, 1e-10)
    for attempt in range(retries + 1):
        try:
            return cov, precision_cholesky_from_covariance(cov, covariance_type)
        except torch.linalg.LinAlgError as err:
            if attempt == retries:
                raise torch.linalg.LinAlgError(
                    f"{err} even after adding jitter {jitter / 10:.1e} to the diagonal; "
                    f"the data may be degenerate: increase reg_covar (now {reg_covar:g})"
                ) from None
            log.warning("%s; retrying with jitter %.1e on the diagonal", err, jitter)
            cov = _add_to_diagonal(cov, jitter, covariance_type)
            jitter *= 10
    raise AssertionError("unreachable")


def _add_to_diagonal(cov: Tensor, value: float, covariance_type: str) -> Tensor:
    if covariance_type in ("full", "tied"):
        return cov + value * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return cov + value


def precision_diagonal(mixture: MixtureDensity) -> Tensor:
    """diag(Sigma_k^{-1}) as (K, D) for every covariance type."""
    p = mixture.precisions_cholesky
    k, d = mixture.means.shape
    if mixture.covariance_type == "diag":
        return p.pow(2)
    if mixture.covariance_type == "spherical":
        return p.pow(2).unsqueeze(-1).expand(k, d)
    diag = p.pow(2).sum(-1)  # (P P^T)_dd = sum_j P_dj^2
    return diag.expand(k, d) if mixture.covariance_type == "tied" else diag


def floor_variances(covariances: Tensor, covariance_type: str, floor: float) -> tuple[Tensor, int]:
    """Raise every eigenvalue of the covariances below ``floor`` to it, eigenvectors kept.

    Returns the covariances in the shape given and how many eigenvalues were raised.
    """
    if covariance_type in ("diag", "spherical"):
        return covariances.clamp_min(floor), int((covariances < floor).sum())
    values, vectors = torch.linalg.eigh(covariances)
    raised = int((values < floor).sum())
    if not raised:
        return covariances, 0
    return (vectors * values.clamp_min(floor).unsqueeze(-2)) @ vectors.transpose(-1, -2), raised


def principal_axes(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PCA of x (N, D) in float64: its mean (D,), the singular values (min(N, D),) of the
    centred data and the principal axes as rows (min(N, D), D), each axis signed so that its
    largest loading is positive (deterministic across runs and machines)."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, s, vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
