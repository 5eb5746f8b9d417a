"""The GPU gives the CPU's numbers.  Skipped where torch sees no CUDA device; a task lent a GPU
machine runs them with scripts/gpu_check.sh."""

import numpy as np
import pytest
import torch

from conftest import FAST, train_in_process
from dgmm_lab import GaussianMixture
from dgmm_lab.mixture.density import COVARIANCE_TYPES
from helpers.em_data import DATASETS, shared_init

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_estimator_on_the_gpu_equals_the_cpu(cov_type):
    x = DATASETS["blobs"]
    kwargs = dict(covariance_type=cov_type, tol=0, max_iter=10, **shared_init(x, 3, cov_type))
    cpu = GaussianMixture(3, **kwargs).fit(x)
    gpu = GaussianMixture(3, device="cuda", **kwargs).fit(x)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(gpu, attr), getattr(cpu, attr), rtol=1e-9, atol=1e-12)
    assert gpu.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-12)
    np.testing.assert_array_equal(gpu.predict(x), cpu.predict(x))
    f32 = GaussianMixture(3, device="cuda", compute_dtype="float32", **kwargs).fit(x)
    assert abs(f32.lower_bound_ - cpu.lower_bound_) < 1e-4


@pytest.mark.parametrize("model", ["em_gmm", "deep_gmm"])
def test_training_on_the_gpu_matches_the_cpu_run(model, tmp_path):
    cpu = train_in_process([f"model={model}", *FAST], tmp_path / "cpu")
    gpu = train_in_process([f"model={model}", "trainer=gpu", *FAST], tmp_path / "gpu")
    assert gpu["test/ari"] > 0.95
    # EM is exact float64 arithmetic; the deep model's float32 kernels differ in rounding
    rel = 1e-9 if model == "em_gmm" else 1e-3
    assert gpu["test/nll"] == pytest.approx(cpu["test/nll"], rel=rel)


def test_splits_kept_on_the_gpu_give_the_run_of_host_batches(tmp_path):
    """data.on_device: batches gathered on the GPU or copied from pinned host memory, the
    same samples in the same order."""
    runs = {flag: train_in_process(["model=deep_gmm", "trainer=gpu", f"data.on_device={flag}", *FAST],
                                   tmp_path / flag) for flag in ("true", "false")}
    assert runs["true"]["test/nll"] == pytest.approx(runs["false"]["test/nll"], rel=1e-6)
    from dgmm_lab.data import SyntheticDataModule

    for flag, on_gpu in (("auto", True), (False, False)):
        data = SyntheticDataModule(n_samples=500, on_device=flag)
        data.setup()
        assert data._rows("train", torch.device("cuda")).tensors[0].is_cuda == on_gpu


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_the_e_step_loop_never_synchronises_with_the_host(cov_type):
    from dgmm_lab.mixture import em

    x = torch.as_tensor(DATASETS["blobs"], device="cuda")
    gm = GaussianMixture(3, covariance_type=cov_type, max_iter=2).fit(DATASETS["blobs"])
    mixture = gm._mixture.to(torch.float64)
    mixture = em.MixtureDensity(mixture.log_weights.cuda(), mixture.means.cuda(), mixture.precisions_cholesky.cuda(),
                                cov_type)
    stats = em.SufficientStats.zeros(3, x.shape[1], cov_type, device="cuda")
    shift = x.mean(0, dtype=torch.float64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in x.split(100):
            em.accumulate(stats, batch, mixture, shift, torch.float32, chunk_size=64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
