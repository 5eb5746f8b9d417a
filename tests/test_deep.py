"""The deep GMM: exact-likelihood parity with EM, deep clustering beating EM on moons,
flow Jacobians, every backbone and objective without NaN."""

import math

import pytest
import torch

from conftest import FAST, train_in_process
from dgmm_lab.mixture.density import COVARIANCE_TYPES
from dgmm_lab.nets.feature_extractor import MLP, Conv, Identity, ResNet
from dgmm_lab.nets.flow import Flow
from dgmm_lab.objectives import NLLObjective, VaDEObjective


def test_nll_identity_matches_em_and_recovers_clusters(tmp_path):
    data = ["data.n_samples=3000", "data.dim=4", "k=3", "trainer.enable_progress_bar=false"]
    em = train_in_process(["model=em_gmm", *data], tmp_path / "em")
    deep = train_in_process(["model=deep_gmm", "objective=nll", "backbone=identity",
                             "model.optimizer.lr=0.01", "trainer.max_epochs=20", *data], tmp_path / "deep")
    assert abs(deep["test/nll"] - em["test/nll"]) <= 0.01 * abs(em["test/nll"])
    assert deep["test/ari"] >= 0.95 and em["test/ari"] >= 0.95


@pytest.mark.slow
def test_vade_separates_moons_better_than_em(tmp_path):
    em = train_in_process(["model=em_gmm", "data.shape=moons", "k=2",
                           "trainer.enable_progress_bar=false"], tmp_path / "em")
    deep = train_in_process(["experiment=vade_moons", "trainer.enable_progress_bar=false"],
                            tmp_path / "vade")
    assert em["test/ari"] < 0.6
    assert deep["test/ari"] >= 0.65 and deep["test/ari"] > em["test/ari"] + 0.1


def test_flow_log_det_equals_brute_force_jacobian():
    torch.manual_seed(0)
    flow = Flow((5,), n_layers=4, hidden=16).double()
    for p in flow.parameters():  # leave the identity start so the test means something
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 5, dtype=torch.float64)
    z, log_det = flow.forward_with_log_det(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0], x[i])
        assert log_det[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)
    torch.testing.assert_close(flow.decode(z), x)


def test_flow_with_mixture_base_integrates_to_one():
    torch.manual_seed(1)
    backbone = Flow((2,), n_layers=4, hidden=16).double()
    for p in backbone.parameters():
        torch.nn.init.normal_(p, std=0.3)
    objective = NLLObjective(backbone, 3, "full").double()
    torch.nn.init.normal_(objective.parameter_generator.means, std=1.5)
    grid = torch.linspace(-12, 12, 600, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        density = objective.log_prob(points).exp()
    cell = (grid[1] - grid[0]) ** 2
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("backbone", [Identity, MLP, Conv, ResNet,
                                      lambda s: Flow(s, dequantize=True)])
def test_every_backbone_runs_forward_and_backward_on_images(backbone):
    net = backbone((1, 28, 28))
    x = torch.rand(4, 1, 28, 28)
    z = net(x)
    assert z.shape == (4, net.out_dim)
    loss = z.pow(2).mean() + net.decode(z).pow(2).mean()
    if any(p.requires_grad for p in net.parameters()):
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("objective, backbone", [("nll", "identity"), ("nll", "flow"),
                                                 ("dagmm", "mlp"), ("vade", "mlp")])
@pytest.mark.parametrize("covariance", COVARIANCE_TYPES)
def test_every_objective_and_covariance_trains_without_nan(objective, backbone, covariance, tmp_path):
    extra = ["objective.likelihood=gaussian", "objective.pretrain_epochs=1"] if objective == "vade" else []
    metrics = train_in_process(
        ["model=deep_gmm", f"objective={objective}", f"backbone={backbone}", f"covariance={covariance}",
         "trainer.max_epochs=2", "data.n_samples=600", "logger=csv", *FAST, *extra], tmp_path)
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_nan_loss_stops_training_before_a_checkpoint(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from dgmm_lab.data import SyntheticDataModule
    from dgmm_lab.models import DeepGMM

    data = SyntheticDataModule(n_samples=600, batch_size=100)
    data.setup()
    x_train, _ = data.splits["train"].tensors
    x_train[250, 0] = float("nan")  # one bad value in the third batch (no shuffling below)
    data.train_dataloader = lambda: torch.utils.data.DataLoader(data.splits["train"], batch_size=100)
    model = DeepGMM(Identity((2,)), NLLObjective, 3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[checkpoints], enable_progress_bar=False,
                         default_root_dir=tmp_path,
                         limit_val_batches=0, num_sanity_val_steps=0)
    model.on_fit_start = lambda: model.objective.initialize(x_train[:200], torch.Generator())
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at epoch 0, step 2"):
        trainer.fit(model, datamodule=data)
    for ckpt in tmp_path.glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_dagmm_evaluates_with_the_training_set_mixture_of_the_final_networks(tmp_path):
    from conftest import load_model
    from dgmm_lab.nets.parameter_generator import AmortizedParameters

    metrics = train_in_process(["model=deep_gmm", "objective=dagmm", "backbone=mlp", "data.n_samples=1500",
                                "data.dim=4", "k=3", "test_ckpt=last", *FAST], tmp_path)
    datamodule, model = load_model(tmp_path)
    objective = model.objective
    x_train = datamodule.tensors("train")[0]
    with torch.no_grad():
        z = objective.features(x_train)[0].double()
        gamma = objective.parameter_generator.memberships(z.float()).double()  # eval mode: no dropout
        expected = objective.parameter_generator.mixture_from_moments(*AmortizedParameters.moments(z, gamma))
        used = objective.mixture()
        assert torch.allclose(used.weights.double(), expected.weights, rtol=1e-5)
        assert torch.allclose(used.means.double(), expected.means, rtol=1e-4, atol=1e-5)
        x_test = datamodule.tensors("test")[0]
        nll = -expected.log_prob(objective.features(x_test)[0].double()).mean()
    assert metrics["test/nll"] == pytest.approx(float(nll), rel=1e-4)


def test_vade_pretraining_loss_is_the_likelihood_or_the_squared_error_of_the_mean(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(6, 784)
    for kind in ("likelihood", "squared_error"):
        vade = VaDEObjective(MLP((784,), 4, (32,)), 3, "diag", likelihood="bernoulli", pretrain_reconstruction=kind)
        logits = vade.backbone.decode(vade.encode(x)[0])
        expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
                    if kind == "likelihood" else (torch.sigmoid(logits) - x).pow(2).sum(1)).mean()
        torch.testing.assert_close(vade.pretrain_loss(x), expected)
    # a sweep over the setting must not reuse the other setting's cached autoencoder
    cache = tmp_path / "cache"
    for kind in ("likelihood", "squared_error"):
        train_in_process(["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.pretrain_epochs=1",
                          f"objective.pretrain_reconstruction={kind}", f"paths.cache_dir={cache}", *FAST], tmp_path / kind)
    assert len(list((cache / "pretrain").glob("pretrain-*.pt"))) == 2


def test_a_run_that_loads_the_cached_pretraining_equals_the_run_that_wrote_it(tmp_path):
    cache = tmp_path / "cache"
    args = ["model=deep_gmm", "objective=vade", "backbone=mlp", "objective.pretrain_epochs=2",
            "trainer.max_epochs=2", f"paths.cache_dir={cache}", *FAST]
    fresh = train_in_process(args, tmp_path / "fresh")
    cached = train_in_process(args, tmp_path / "cached")
    assert len(list((cache / "pretrain").glob("pretrain-*.pt"))) == 1
    timing = {k for k in fresh if "seconds" in k or "time" in k}
    assert {k: v for k, v in cached.items() if k not in timing} == {k: v for k, v in fresh.items() if k not in timing}


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_floor_variances_raises_only_the_small_eigenvalues(covariance_type):
    from dgmm_lab.mixture.covariances import floor_variances
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(2, 4, 4, dtype=torch.float64))[0]
    values = torch.tensor([[1e-5, 0.5, 1.0, 2.0], [0.3, 0.4, 1.0, 3.0]], dtype=torch.float64)
    full = q @ torch.diag_embed(values) @ q.transpose(-1, -2)
    given = {"full": full, "tied": full[0], "diag": values, "spherical": values[:, 0]}[covariance_type]
    floored, raised = floor_variances(given, covariance_type, 0.1)
    assert raised == 1 and floored.shape == given.shape
    if covariance_type in ("full", "tied"):
        new_values, new_vectors = torch.linalg.eigh(floored)
        torch.testing.assert_close(new_values.flatten()[:4], torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64))
        # the eigenvector of the raised eigenvalue is kept (up to sign)
        assert abs(float(new_vectors.reshape(-1, 4, 4)[0, :, 0] @ q[0, :, 0])) == pytest.approx(1.0)
        if covariance_type == "full":
            torch.testing.assert_close(floored[1], full[1])  # nothing below the floor: unchanged
    else:
        assert float(floored.min()) == 0.1 and torch.equal(floored.flatten()[1:], given.flatten()[1:])
    unchanged, none = floor_variances(given, covariance_type, 1e-6)
    assert none == 0 and torch.equal(unchanged, given)


def test_vade_start_prior_is_not_narrower_than_a_tenth_of_the_posterior_variance(caplog):
    torch.manual_seed(0)
    vade = VaDEObjective(MLP((6,), 3, (16,)), 2, "full")
    with torch.no_grad():  # one code direction that does not vary: EM finds a variance near 0
        vade.backbone.head.weight[2].zero_()
    x = torch.cat([torch.randn(200, 6) - 2, torch.randn(200, 6) + 2])
    vade.initialize(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        floor = 0.1 * float(vade.encode(x)[1].exp().mean())
    eigenvalues = vade.mixture().covariance_eigenvalues()
    assert float(eigenvalues.min()) == pytest.approx(floor, rel=1e-4)
    assert "were raised" in caplog.text
    caplog.clear()
    healthy = VaDEObjective(MLP((6,), 3, (16,)), 2, "full")
    healthy.initialize(x, torch.Generator().manual_seed(0))
    assert float(healthy.mixture().covariance_eigenvalues().min()) > floor and "raised" not in caplog.text
