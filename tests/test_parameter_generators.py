"""The parameter generators and the density core's sampler, against independent arithmetic:
GlobalParameters' set-then-read round trip, AmortizedParameters' moments against EM's M-step,
and the gradients MixtureDensity.rsample claims (means and precision factors, not weights)."""

import numpy as np
import pytest
import torch

from dgmm_lab.mixture import em
from dgmm_lab.mixture.covariance_types import COVARIANCE_TYPES
from dgmm_lab.mixture.density import MixtureDensity
from dgmm_lab.nets.parameter_generator import AmortizedParameters, GlobalParameters
from helpers.gaussians import full_covariances, random_mixture

K, D = 3, 4


# --------------------------------------------------------------------------- GlobalParameters


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_global_parameters_give_back_what_they_were_set_from(covariance_type, dtype, tol):
    weights, means, covariances = random_mixture(np.random.default_rng(0), K, D, covariance_type)
    gen = GlobalParameters(K, D, covariance_type, min_scale=1e-3).to(dtype)
    gen.set_from(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(covariances))
    mixture = gen()
    assert isinstance(mixture, MixtureDensity) and mixture.covariance_type == covariance_type
    for got, want in ((mixture.weights, weights), (mixture.means, means), (mixture.covariances, covariances)):
        assert got.dtype == dtype and tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=tol, atol=tol)
    # and the density it scores is that mixture's (precision factor consistent with the covariances)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(50, D)), dtype=dtype)
    reference = MixtureDensity.from_covariances(*(torch.as_tensor(a, dtype=torch.float64)
                                                  for a in (weights, means, covariances)), covariance_type)
    np.testing.assert_allclose(mixture.log_prob(x).detach().double().numpy(),
                               reference.log_prob(x.double()).numpy(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_global_parameters_keep_every_scale_above_min_scale(covariance_type):
    min_scale = 0.1
    weights, means, _ = random_mixture(np.random.default_rng(2), K, D, covariance_type)
    tiny = {"full": np.broadcast_to(1e-6 * np.eye(D), (K, D, D)).copy(), "tied": 1e-6 * np.eye(D),
            "diag": np.full((K, D), 1e-6), "spherical": np.full(K, 1e-6)}[covariance_type]
    gen = GlobalParameters(K, D, covariance_type, min_scale=min_scale).double()
    gen.set_from(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(tiny))
    eigenvalues = gen().covariance_eigenvalues().detach()
    assert float(eigenvalues.min()) >= min_scale**2 * (1 - 1e-9)


# --------------------------------------------------------------------------- AmortizedParameters


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mixture_from_moments_equals_the_em_m_step(covariance_type):
    rng = np.random.default_rng(3)
    n, eps = 300, 1e-8
    z = torch.as_tensor(rng.normal(size=(n, D)) @ rng.normal(size=(D, D)) + rng.normal(size=D))
    gamma = torch.softmax(torch.as_tensor(2.0 * rng.normal(size=(n, K))), -1)
    amortized = AmortizedParameters(D, K, covariance_type, eps=eps)
    ours = amortized.mixture_from_moments(*amortized.moments(z, gamma))
    shift = z.mean(0)
    ref = em.m_step(em.stats_from_responsibilities(z, gamma, shift, covariance_type), shift,
                    covariance_type, reg_covar=eps)
    for got, want in ((ours.weights, ref.weights), (ours.means, ref.means), (ours.covariances, ref.covariances)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.precisions_cholesky.numpy(), ref.precisions_cholesky.numpy(),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_training_set_mixture_is_the_same_in_any_batching(covariance_type):
    rng = np.random.default_rng(4)
    z = torch.as_tensor(rng.normal(size=(200, D)))
    amortized = AmortizedParameters(D, K, covariance_type, dropout=0.0).double().eval()
    amortized.fit_training_set([z])
    whole = amortized.training_set_mixture(torch.float64)
    amortized.fit_training_set(torch.split(z, 37))
    batched = amortized.training_set_mixture(torch.float64)
    direct = amortized.mixture_from_moments(*amortized.moments(z, amortized.memberships(z)))
    for a, b, c in ((whole.weights, batched.weights, direct.weights), (whole.means, batched.means, direct.means),
                    (whole.covariances, batched.covariances, direct.covariances)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a.detach().numpy(), c.detach().numpy(), rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- rsample / sample


def _leaf_mixture(covariance_type: str, seed: int = 5):
    """A float64 mixture whose log weights, means and precision factors are leaf tensors."""
    weights, means, covariances = random_mixture(np.random.default_rng(seed), K, D, covariance_type)
    ref = MixtureDensity.from_covariances(*(torch.as_tensor(a) for a in (weights, means, covariances)),
                                          covariance_type)
    return (ref.log_weights.clone().requires_grad_(), ref.means.clone().requires_grad_(),
            ref.precisions_cholesky.clone().requires_grad_())


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rsample_derivative_of_the_sample_mean_in_the_means_is_the_label_frequency(covariance_type):
    log_w, means, prec = _leaf_mixture(covariance_type)
    n = 500
    x, labels = MixtureDensity(log_w, means, prec, covariance_type).rsample(n, torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(x.mean(0).sum(), means, retain_graph=True)
    # d mean_n(x_n,d) / d mu_k,e = delta_de * #{n: label_n = k} / n
    counts = torch.bincount(labels, minlength=K).double() / n
    torch.testing.assert_close(grad, counts.unsqueeze(-1).expand(K, D), rtol=0, atol=1e-12)
    # per sample and coordinate: x_n,d moves one-for-one with its own component's mean only
    (grad_one,) = torch.autograd.grad(x[7, 2], means)
    expected = torch.zeros(K, D, dtype=torch.float64)
    expected[labels[7], 2] = 1.0
    torch.testing.assert_close(grad_one, expected, rtol=0, atol=0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rsample_is_a_reparameterisation_differentiable_in_means_and_precision_factors(covariance_type):
    log_w, means, prec = _leaf_mixture(covariance_type)

    def draw(means, prec):  # the same noise and labels for every argument: a pathwise function
        return MixtureDensity(log_w.detach(), means, prec, covariance_type).rsample(
            40, torch.Generator().manual_seed(1))[0]

    assert torch.autograd.gradcheck(draw, (means, prec), eps=1e-6, atol=1e-6)
    x, _ = MixtureDensity(log_w, means, prec, covariance_type).rsample(40, torch.Generator().manual_seed(1))
    g_log_w, g_prec = torch.autograd.grad(x.pow(2).sum(), (log_w, prec), allow_unused=True)
    assert g_log_w is None  # the labels are discrete: no pathwise gradient to the weights (as documented)
    assert g_prec is not None and float(g_prec.abs().sum()) > 0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rsample_from_global_parameters_reaches_every_scale_parameter(covariance_type):
    gen = GlobalParameters(K, D, covariance_type).double()
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(6), dtype=p.dtype))
    x, _ = gen().rsample(200, torch.Generator().manual_seed(2))
    x.pow(2).sum().backward()
    grads = {name: p.grad for name, p in gen.named_parameters()}
    assert grads["logits"] is None
    for name in {"means", "raw_scale", "off_diagonal"} & set(grads):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_has_no_gradient_and_draws_the_same_as_rsample(covariance_type):
    log_w, means, prec = _leaf_mixture(covariance_type)
    mixture = MixtureDensity(log_w, means, prec, covariance_type)
    drawn, labels = mixture.sample(30, torch.Generator().manual_seed(3))
    assert not drawn.requires_grad and drawn.grad_fn is None
    again, labels_again = mixture.rsample(30, torch.Generator().manual_seed(3))
    assert again.requires_grad
    torch.testing.assert_close(drawn, again.detach(), rtol=0, atol=0)
    assert torch.equal(labels, labels_again)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rsample_moments_are_the_mixture_moments(covariance_type):
    weights, means, covariances = random_mixture(np.random.default_rng(7), K, D, covariance_type)
    mixture = MixtureDensity.from_covariances(*(torch.as_tensor(a) for a in (weights, means, covariances)),
                                              covariance_type)
    n = 200_000
    x, labels = mixture.sample(n, torch.Generator().manual_seed(4))
    x, labels = x.numpy(), labels.numpy()
    covs = full_covariances(covariances, covariance_type, K, D)
    np.testing.assert_allclose(np.bincount(labels, minlength=K) / n, weights, atol=5 * np.sqrt(0.25 / n))
    for k in range(K):  # each component's draws are N(mu_k, Sigma_k)
        xk = x[labels == k]
        se_mean = np.sqrt(np.diag(covs[k]) / len(xk))
        np.testing.assert_array_less(np.abs(xk.mean(0) - means[k]), 5 * se_mean)
        centred = xk - means[k]
        products = centred[:, :, None] * centred[:, None, :]
        se_cov = products.std(0) / np.sqrt(len(xk))
        np.testing.assert_array_less(np.abs(products.mean(0) - covs[k]), 5 * se_cov + 1e-12)
