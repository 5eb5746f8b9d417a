"""Per-objective defaults that make sense: what a bare command composes for each objective
(its backbone, what checkpoints are selected by) gives a model that gets better with more
components and a best checkpoint that is the best model."""

import json

import pytest

from conftest import run_cli
from test_train import read_events


def train(args, out):
    result = run_cli([*args, "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_mdn_defaults_gain_from_more_components(tmp_path):
    # the command as typed: identity, the old default backbone, gave k=3 1.44 > k=1 0.53
    nll = {k: train(["model=deep_gmm", "objective=mdn", "data=regression", f"k={k}", "trainer.max_epochs=40"],
                    tmp_path / f"k{k}")["test/nll"] for k in (1, 3)}
    assert nll[3] < nll[1] - 0.3, nll


def test_dagmm_checkpoints_are_selected_by_its_validation_loss(tmp_path):
    # 40-D data: the energy (val/nll) is lowest at the first validation and rises while the
    # whole loss falls, so selecting by it kept the epoch-0 model
    out = tmp_path / "run"
    metrics = train(["model=deep_gmm", "objective=dagmm", "data.dim=40", "trainer.max_epochs=4"], out)
    events = read_events(out)
    energy = [e.value for e in events.Scalars("val/nll")]
    loss = [e.value for e in events.Scalars("val/loss")]
    assert energy.index(min(energy)) == 0 and loss.index(min(loss)) > 0
    assert metrics["best/val/loss"] == pytest.approx(min(loss), rel=1e-6)
    [best] = (out / "checkpoints").glob("best-*.ckpt")
    assert best.name == f"best-epoch{loss.index(min(loss)):03d}.ckpt"


def test_optimized_metric_defaults_per_objective_and_is_checked(tmp_path):
    for args, metric in ((["model=em_gmm"], "val/nll"), (["model=deep_gmm", "objective=vade"], "val/nll"),
                         (["hparams_search=dagmm"], "val/loss"),
                         (["model=deep_gmm", "objective=dagmm", "optimized_metric=val/nll"], "val/nll")):
        result = run_cli([*args, "--cfg", "job", "--resolve"])
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"optimized_metric: {metric}\n" in result.stdout and f"monitor: {metric}\n" in result.stdout, args
    refused = run_cli(["model=deep_gmm", "objective=nll", "optimized_metric=val/loss", f"hydra.run.dir={tmp_path}"])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "dgmm_lab: error: optimized_metric='val/loss' is not allowed; allowed: val/nll, val/bits_per_dim, "
        "train/loss (minimised; val/bits_per_dim for image densities; default: val/nll)")
