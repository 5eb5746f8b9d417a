"""The objectives' mathematics against independent computations (numpy, scipy,
torch.distributions, Monte Carlo): VaDE's negative ELBO, DAGMM's energy and covariance
penalty, the mixture density network's conditional density and samples."""

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp

from dgmm_lab.mixture.covariance_types import COVARIANCE_TYPES
from dgmm_lab.nets.feature_extractor import MLP
from dgmm_lab.objectives import DAGMMObjective, MDNObjective, VaDEObjective
from helpers.gaussians import (component_logpdf, full_covariances, mixture_logpdf, random_mixture,
                               reduce_covariances)

X_DIM, LATENT = 6, 3


def mc_agree(a: np.ndarray, b: np.ndarray, se: np.ndarray, n_se: float = 5.0) -> None:
    """Two estimates of the same quantities differ by at most n_se standard errors."""
    assert np.all(np.abs(a - b) <= n_se * se), (a, b, se)


# --------------------------------------------------------------------------- VaDE


def vade(k: int, covariance_type: str, seed: int = 0):
    """A float64 VaDE on a small MLP with a Gaussian decoder, posterior variances of a few
    tenths that differ per input and dimension, and a random prior; -> (objective, prior)."""
    torch.manual_seed(seed)
    obj = VaDEObjective(MLP((X_DIM,), LATENT, (16,)), k, covariance_type, likelihood="gaussian",
                        decoder_std=0.7).double()
    with torch.no_grad():
        obj.log_var_head.weight.normal_(0.0, 0.3)
        obj.log_var_head.bias.fill_(math.log(0.3))
    prior = random_mixture(np.random.default_rng(seed), k, LATENT, covariance_type)
    obj.parameter_generator.set_from(*(torch.as_tensor(a) for a in prior))
    weights, means, covariances = prior
    return obj, (weights, means, full_covariances(covariances, covariance_type, k, LATENT))


def posterior(obj, x):
    with torch.no_grad():
        mu, log_var = obj.encode(x)
    return mu.numpy(), log_var.exp().numpy()


def gaussian_reconstruction_nll(obj, x: torch.Tensor, z: np.ndarray) -> np.ndarray:
    """-log N(x | decoder(z), decoder_std^2 I) per row, from the decoder's output."""
    with torch.no_grad():
        out = obj.decode(torch.as_tensor(z)).flatten(1).numpy()
    s = obj.decoder_std
    return 0.5 * (((out - x.flatten(1).numpy()) / s) ** 2 + np.log(2 * np.pi * s**2)).sum(1)


def expected_log_normal(mu, var, means, covs) -> np.ndarray:
    """E_{z ~ N(mu, diag var)} log N(z | m_c, S_c), closed form, (N, K)."""
    precisions = np.linalg.inv(covs)
    trace = var @ np.diagonal(precisions, axis1=-2, axis2=-1).T
    return component_logpdf(mu, means, covs) - 0.5 * trace


def draw_posterior(mu, var, n: int, seed: int) -> np.ndarray:
    """n draws z ~ q(z | x) for every input: (N, n, D)."""
    eps = np.random.default_rng(seed).normal(size=(mu.shape[0], n, mu.shape[1]))
    return mu[:, None] + np.sqrt(var)[:, None] * eps


def log_q(z, mu, var) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var)[:, None] + (z - mu[:, None]) ** 2 / var[:, None]).sum(-1)


def per_row(f, z: np.ndarray) -> np.ndarray:
    """f over (N, n, D) draws flattened to rows, reshaped back to (N, n, ...)."""
    out = f(z.reshape(-1, z.shape[-1]))
    return out.reshape(*z.shape[:2], *out.shape[1:])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_vade_with_one_component_is_reconstruction_plus_the_exact_gaussian_kl(covariance_type):
    obj, (weights, means, covs) = vade(1, covariance_type)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(5, X_DIM)))
    with torch.no_grad():
        nelbo = obj.negative_elbo(x, sample=False)[0].numpy()
    mu, var = posterior(obj, x)
    # KL(N(mu, diag var) || N(m, S)) = 1/2 [tr(S^-1 V) + (m - mu)^T S^-1 (m - mu) - D + log|S| - log|V|]
    s_inv = np.linalg.inv(covs[0])
    diff = mu - means[0]
    kl = 0.5 * (var @ np.diag(s_inv) + np.einsum("nd,de,ne->n", diff, s_inv, diff) - LATENT
                + np.linalg.slogdet(covs[0])[1] - np.log(var).sum(1))
    reconstruction = gaussian_reconstruction_nll(obj, x, mu)  # sample=False: decoded at the posterior mean
    np.testing.assert_allclose(nelbo, reconstruction + kl, rtol=1e-10, atol=1e-10)
    # the closed form itself, against Monte Carlo of E_q[log q(z|x) - log p(z)]
    z = draw_posterior(mu, var, 100_000, seed=2)
    log_ratio = log_q(z, mu, var) - per_row(lambda r: mixture_logpdf(r, weights, means, covs), z)
    mc_agree(log_ratio.mean(1), kl, log_ratio.std(1) / np.sqrt(z.shape[1]))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_vade_prior_term_is_the_documented_gamma_weighted_bound(covariance_type):
    """-ELBO = -E_q log p(x|z) - sum_c gamma_c [log pi_c + E_q log N(z|mu_c,S_c) - log gamma_c] - H[q],
    gamma = p(c | z) at z = the posterior mean (sample=False); for any fixed gamma this
    bounds the exact E_q[log q(z|x) - log p(z)] from above (Jensen)."""
    k = 3
    obj, (weights, means, covs) = vade(k, covariance_type, seed=3)
    x = torch.as_tensor(np.random.default_rng(4).normal(size=(6, X_DIM)))
    with torch.no_grad():
        kl_part = obj.negative_elbo(x, sample=False)[0].numpy()
    mu, var = posterior(obj, x)
    kl_part = kl_part - gaussian_reconstruction_nll(obj, x, mu)
    log_gamma = log_softmax(np.log(weights) + component_logpdf(mu, means, covs), axis=-1)
    entropy = 0.5 * (1 + np.log(2 * np.pi * var)).sum(1)
    documented = -(np.exp(log_gamma) * (np.log(weights) + expected_log_normal(mu, var, means, covs)
                                        - log_gamma)).sum(1) - entropy
    np.testing.assert_allclose(kl_part, documented, rtol=1e-10, atol=1e-10)
    z = draw_posterior(mu, var, 50_000, seed=5)
    # E_q log N(z | mu_c, S_c) as the code takes it in closed form, against Monte Carlo
    comp = per_row(lambda r: component_logpdf(r, means, covs), z)  # (N, n, K)
    mc_agree(comp.mean(1), expected_log_normal(mu, var, means, covs), comp.std(1) / np.sqrt(z.shape[1]))
    # an upper bound on the exact KL term
    log_ratio = log_q(z, mu, var) - per_row(lambda r: mixture_logpdf(r, weights, means, covs), z)
    se = log_ratio.std(1) / np.sqrt(z.shape[1])
    assert np.all(kl_part >= log_ratio.mean(1) - 5 * se), (kl_part, log_ratio.mean(1), se)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_vade_training_loss_averages_to_the_documented_bound(covariance_type, k):
    """The loss (sample=True: one z ~ q per row, gamma = p(c | z)) averaged over many draws
    against an independent Monte Carlo of the same expectation; for K=1 that is the exact
    -ELBO = E_q[-log p(x|z) + log q(z|x) - log p(z)], for K>1 at least that."""
    obj, (weights, means, covs) = vade(k, covariance_type, seed=6)
    x = torch.as_tensor(np.random.default_rng(7).normal(size=(4, X_DIM)))
    n = 20_000
    torch.manual_seed(8)
    with torch.no_grad():
        losses = obj.negative_elbo(x.repeat_interleave(n, 0), sample=True)[0].numpy().reshape(4, n)
    mu, var = posterior(obj, x)
    z = draw_posterior(mu, var, n, seed=9)
    reconstruction = gaussian_reconstruction_nll(obj, x.repeat_interleave(n, 0), z.reshape(-1, LATENT)).reshape(4, n)
    comp = per_row(lambda r: component_logpdf(r, means, covs), z)  # log N(z | mu_c, S_c) (N, n, K)
    log_gamma = log_softmax(np.log(weights) + comp, axis=-1)  # p(c | z) at each draw
    expected = np.broadcast_to(expected_log_normal(mu, var, means, covs)[:, None], comp.shape)
    entropy = 0.5 * (1 + np.log(2 * np.pi * var)).sum(1)[:, None]
    documented = reconstruction - (np.exp(log_gamma) * (np.log(weights) + expected - log_gamma)).sum(-1) - entropy
    se = np.sqrt(losses.var(1) / n + documented.var(1) / n)
    mc_agree(losses.mean(1), documented.mean(1), se)
    exact = reconstruction + log_q(z, mu, var) - logsumexp(np.log(weights) + comp, axis=-1)
    se_exact = np.sqrt(losses.var(1) / n + exact.var(1) / n)
    if k == 1:
        mc_agree(losses.mean(1), exact.mean(1), se_exact)
    else:
        assert np.all(losses.mean(1) >= exact.mean(1) - 5 * se_exact)


# --------------------------------------------------------------------------- DAGMM


PAPER_FEATURES = ("relative_euclidean", "cosine")
DEFAULT_FEATURES = ("log_euclidean", "cosine")


@pytest.mark.parametrize("features", [PAPER_FEATURES, DEFAULT_FEATURES], ids=["paper", "default"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_dagmm_energy_and_reconstruction_are_the_hand_computed_ones(covariance_type, features):
    obj, x, z, mixture_ref = _dagmm_case(covariance_type, features=features)
    with torch.no_grad():
        loss, logs = obj.loss(x)
    weights, means, covs = mixture_ref
    energy = -mixture_logpdf(z, weights, means, full_covariances(covs, covariance_type, len(weights), z.shape[1]))
    # rtol: the error features' own 1e-8 guards against division by zero, left out here
    np.testing.assert_allclose(float(logs["energy"]), energy.mean(), rtol=1e-6)
    with torch.no_grad():
        x_hat = obj.backbone.decode(obj.backbone(x)).numpy()
    reconstruction = ((x.numpy() - x_hat) ** 2).sum(1).mean()
    np.testing.assert_allclose(float(logs["reconstruction"]), reconstruction, rtol=1e-10)
    np.testing.assert_allclose(float(loss), float(logs["reconstruction"]) + obj.lambda_energy * float(logs["energy"])
                               + obj.lambda_cov * float(logs["cov_penalty"]), rtol=1e-12)
    # and the evaluation density (-energy) of the training-set mixture fitted on the same batch
    # (in the networks' float64, as log_prob scores it)
    obj.fit_training_set([x])
    with torch.no_grad():
        scores = obj.mixture().log_prob(torch.as_tensor(z)).numpy()
        from_inputs = obj.log_prob(x).numpy()
    np.testing.assert_allclose(scores, -energy, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(from_inputs, -energy, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_dagmm_covariance_penalty_is_the_sum_of_inverse_variances(covariance_type):
    obj, x, z, (weights, _, covs) = _dagmm_case(covariance_type)
    with torch.no_grad():
        penalty = float(obj.loss(x)[1]["cov_penalty"])
    k, d = len(weights), z.shape[1]
    variances = np.diagonal(full_covariances(covs, covariance_type, k, d), axis1=-2, axis2=-1)  # Sigma_k,dd (K, D)
    np.testing.assert_allclose(penalty, (1.0 / variances).sum(), rtol=1e-6)


def _dagmm_case(covariance_type, k: int = 3, n: int = 64, features=DEFAULT_FEATURES):
    """A float64 DAGMM in eval mode on random inputs, its features z computed by hand, and the
    batch mixture from z and the estimation network's memberships gamma: the gamma-weighted
    moments, with the generator's documented regulariser eps added to each component's count
    and to each covariance's diagonal."""
    torch.manual_seed(10)
    obj = DAGMMObjective(MLP((X_DIM,), LATENT, (16,)), k, covariance_type, estimation_hidden=8,
                         error_features=features).double().eval()
    x = torch.as_tensor(np.random.default_rng(11).normal(size=(n, X_DIM)))
    with torch.no_grad():
        code = obj.backbone(x).numpy()
        x_hat = obj.backbone.decode(obj.backbone(x)).numpy()
    xs = x.numpy()
    error = np.linalg.norm(xs - x_hat, axis=1)
    by_hand = {"relative_euclidean": error / np.linalg.norm(xs, axis=1), "log_euclidean": np.log(error + 1e-3),
               "cosine": (xs * x_hat).sum(1) / (np.linalg.norm(xs, axis=1) * np.linalg.norm(x_hat, axis=1))}
    z = np.concatenate([code, *(by_hand[name][:, None] for name in features)], 1)
    with torch.no_grad():
        gamma = obj.parameter_generator.memberships(torch.as_tensor(z)).numpy()
    eps = obj.parameter_generator.eps
    nk = gamma.sum(0) + eps
    means = gamma.T @ z / nk[:, None]
    covs = np.stack([(g[:, None] * z).T @ z / c - np.outer(m, m) for g, m, c in zip(gamma.T, means, nk)])
    covs = covs + eps * np.eye(z.shape[1])
    return obj, x, z, (nk / n, means, reduce_covariances(covs, nk / nk.sum(), covariance_type))


# --------------------------------------------------------------------------- MDN


def mdn(covariance_type, k: int = 3, target_dim: int = 2):
    torch.manual_seed(12)
    obj = MDNObjective(MLP((4,), 5, (16,)), k, covariance_type, target_dim=target_dim).double()
    with torch.no_grad():  # well separated components with clearly correlated full covariances
        obj.parameter_generator.head.weight.mul_(4.0)
    return obj


def mdn_reference(obj, x):
    """Weights (N, K), means (N, K, D), full covariances (N, K, D, D) of p(y | x), with
    Sigma = (P P^T)^-1 from the precision factors P the network outputs."""
    with torch.no_grad():
        log_w, means, prec = (t.numpy() for t in obj.conditional_mixture(x))
    n, k, d = means.shape
    ct = obj.covariance_type
    if ct == "diag":
        prec = np.stack([[np.diag(p) for p in row] for row in prec])
    elif ct == "spherical":
        prec = prec[..., None, None] * np.eye(d)
    elif ct == "tied":
        prec = np.broadcast_to(prec[:, None], (n, k, d, d))
    covs = np.linalg.inv(prec @ np.swapaxes(prec, -1, -2))
    return np.exp(log_w), means, covs


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mdn_log_prob_is_the_conditional_mixture_density(covariance_type):
    obj = mdn(covariance_type)
    x = torch.as_tensor(np.random.default_rng(13).normal(size=(5, 4)))
    y = np.random.default_rng(14).normal(scale=2.0, size=(5, 2))
    weights, means, covs = mdn_reference(obj, x)
    expected = [mixture_logpdf(y[i:i + 1], weights[i], means[i], covs[i])[0] for i in range(5)]
    with torch.no_grad():
        np.testing.assert_allclose(obj.log_prob(x, torch.as_tensor(y)).numpy(), expected, rtol=1e-10)
        np.testing.assert_allclose(obj.conditional_mean(x).numpy(), (weights[..., None] * means).sum(1), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mdn_samples_have_the_conditional_mixture_mean_and_covariance(covariance_type):
    obj = mdn(covariance_type)
    x = torch.as_tensor(np.random.default_rng(15).normal(size=(3, 4)))
    n = 200_000
    y = obj.sample(x, n, generator=torch.Generator().manual_seed(16)).numpy()
    assert y.shape == (3, n, 2)
    weights, means, covs = mdn_reference(obj, x)
    mean = (weights[..., None] * means).sum(1)
    second = (weights[..., None, None] * (covs + means[..., :, None] * means[..., None, :])).sum(1)
    cov = second - mean[:, :, None] * mean[:, None, :]
    assert np.abs(cov[:, 0, 1]).max() > 0.1  # the check below sees the correlations
    mc_agree(y.mean(1), mean, y.std(1) / np.sqrt(n))
    centred = y - mean[:, None]
    products = centred[..., :, None] * centred[..., None, :]
    mc_agree(products.mean(1), cov, products.std(1) / np.sqrt(n))


@pytest.mark.parametrize("bad", [None, 3, ["cosine", "cosine"], ["Cosine"]])
def test_dagmm_error_features_are_checked(bad):
    with pytest.raises(ValueError, match="objective.error_features=.* is not allowed; allowed: a list of distinct names"):
        DAGMMObjective(MLP((X_DIM,), LATENT, (16,)), 2, "full", error_features=bad)
