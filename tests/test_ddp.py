"""Two processes (DDP, gloo on CPU) give the same results as one."""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.ddp

# 3001 samples: an odd training split, so a padding sampler would be caught
COMMON = ["debug=fast", "k=3"]
EM = ["data.n_samples=3001", "trainer.max_epochs=4", "model.tol=0"]


def train(tmp_path, name, extra):
    out = tmp_path / name
    result = run_cli([*COMMON, *extra, f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def one_process_and_two(tmp_path, common):
    """metrics.json of one process with batch 256 and of two DDP processes with 128 each."""
    one = train(tmp_path, "one", [*common, "data.batch_size=256"])
    two = train(tmp_path, "two", [*common, "data.batch_size=128", "trainer=ddp", "trainer.accelerator=cpu",
                                  "trainer.devices=2"])
    return one, two


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_two_processes_equal_one(covariance, tmp_path):
    one = train(tmp_path, "one", [*EM, f"covariance={covariance}"])
    two = train(tmp_path, "two", [*EM, f"covariance={covariance}", "trainer=ddp",
                                  "trainer.accelerator=cpu", "trainer.devices=2"])
    for key in ("train/log_likelihood", "val/nll", "test/nll", "train/bic"):
        assert two[key] == pytest.approx(one[key], rel=1e-9, abs=1e-9), key
    assert two["test/acc"] == one["test/acc"]


def test_local_sweep_with_two_processes_per_job(tmp_path):
    result = run_cli(["k=2,3", "trainer=ddp_spawn", "trainer.accelerator=cpu", "debug=fast",
                      f"hydra.sweep.dir={tmp_path}", "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name.split(",")[0] for j in jobs] == ["k=2", "k=3"]
    for job, k in zip(jobs, (2, 3)):
        assert (job / "metrics.json").exists()
        ranks = [json.loads(f.read_text()) for f in sorted((job / "ranks").glob("rank*.json"))]
        assert [r["global_rank"] for r in ranks] == [0, 1]
        assert all(r["world_size"] == 2 and r["hparams"]["n_components"] == k for r in ranks)


def test_popen_ddp_in_a_local_sweep_is_refused(tmp_path):
    result = run_cli(["k=2,3", "trainer=ddp", "trainer.accelerator=cpu", "debug=fast",
                      f"hydra.sweep.dir={tmp_path}", "-m"])
    assert "use trainer=ddp_spawn there" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_deep_gmm_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    # rank r takes every 2nd index of the same seed+epoch permutation, so two ranks with
    # batch 128 see exactly the samples of one process with batch 256; DDP averages the
    # gradients of the two half-batch means = the gradient of the full-batch mean
    common = ["model=deep_gmm", "objective=nll", "backbone=identity", "debug=fast", "data.n_samples=3000",
              "trainer.max_epochs=3", "model.optimizer.lr=0.01"]
    one, two = one_process_and_two(tmp_path, common)
    for key in ("val/nll", "test/nll"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert two["test/acc"] == one["test/acc"]


def test_dagmm_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    # batch moments are all-reduced with gradients and the evaluation mixture is summed over
    # the ranks' shares of the training set, so (without dropout, whose masks are per rank)
    # two ranks x 128 train and evaluate as one process x 256
    common = ["model=deep_gmm", "objective=dagmm", "backbone=mlp", "objective.dropout=0", "debug=fast",
              "data.n_samples=3000", "data.dim=4", "trainer.max_epochs=3", "test_ckpt=last"]
    one, two = one_process_and_two(tmp_path, common)
    for key in ("val/nll", "test/nll"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key


def test_vade_pretraining_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    # the autoencoder pre-training is its own loop before the first step: with two ranks it
    # must average their gradients as DDP does, so both ranks start VaDE from the autoencoder
    # one process with the same global batch trains.  No VaDE epoch after it (its sampled
    # codes draw per-rank noise): test/* and start/* are of the pre-trained start values
    common = ["model=deep_gmm", "objective=vade", "backbone=mlp", "debug=fast", "data.n_samples=3000",
              "data.dim=4", "backbone.latent_dim=2", "objective.pretrain_epochs=3", "objective.pretrain_lr=0.01",
              "objective.likelihood=gaussian", "trainer.max_epochs=0", "test_ckpt=last", "objective.pretrain_cache_dir=null"]
    one, two = one_process_and_two(tmp_path, common)
    for key in ("test/nll", "start/ari"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
