"""Bad input ends before anything trains, in one ``dgmm_lab: error:`` line naming the key,
the value and what is allowed (exit status 2): the real CLI, as a user types it."""

import gzip
import re

import numpy as np
import pytest

from conftest import FAST, compose_config, run_cli, train_in_process
from dgmm_lab.config import ConfigError, check_config, check_override_ranges, check_overrides
from dgmm_lab.data import ArrayDataModule
from dgmm_lab.data.mnist import RAW_FILES, damaged_raw_file

# Lightning's seed_everything printed this to stderr before the data was read; train.py
# now seeds quietly, and the line must not come back
LIGHTNING_SEED_LINE = "Seed set to "


def assert_one_error_line(result, out_dir, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dgmm_lab: error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not list(out_dir.rglob("*.ckpt")) and not list(out_dir.rglob("metrics.json")), "nothing may be trained"
    return lines[0]


def cli(args: list[str], tmp_path):
    return run_cli([*args, *FAST, f"paths.log_dir={tmp_path / 'out'}"], timeout=120)


@pytest.mark.parametrize("args, needles", [
    (["data.batch_size=0"], ["data.batch_size=0 is not allowed", "allowed: an integer >= 1"]),
    (["data.on_device=maybe"], ["data.on_device='maybe' is not allowed", "allowed: true or false, or auto"]),
    (["k=2,3"], ["k=2,3 sweeps over values, which runs only with -m", "k=2,3 -m", "k=[2,3]", "k='2,3'"]),
    (["k=range(2,4)"], ["k=range(2,4) sweeps over values", "allowed: k=range(2,4) -m (a job each)"]),
    (["seed=abc"], ["seed='abc' is not allowed", "allowed: an integer in 0..4294967295"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc' is not allowed", "allowed: an integer >= -1"]),
    (["model=deep_gmm", "trainer.max_epochs=-1"], ["trainer.max_epochs=-1 would train model=deep_gmm forever",
                                                   "allowed: an integer >= 0"]),
    (["data.val_fraction=1.5"], ["data.val_fraction=1.5 is not allowed", "allowed: a number in [0, 1)"]),
    (["trainer.precision=16-mixed"], ["trainer.precision='16-mixed' is not allowed", "allowed: 32-true, bf16-mixed"]),
    (["trainer.precision=32"], ["trainer.precision=32 is not allowed", "older spelling of 32-true: write 32-true"]),
    (["model=deep_gmm", "objective=vade", "trainer.precision=bf16"], ["older spelling of bf16-mixed: write bf16-mixed"]),
    (["trainer.precision=bf16-mixed"], ["trainer.precision=bf16-mixed is not allowed with model=em_gmm",
                                        "allowed: 32-true (bf16-mixed is offered with objective=vade)"]),
    (["model=deep_gmm", "objective=dagmm", "trainer.precision=bf16-mixed"],
     ["trainer.precision=bf16-mixed is not allowed with objective=dagmm"]),
    (["model=deep_gmm", "+model.optimizer.fused=yes"], ["model.optimizer.fused='yes' is not allowed",
                                                        "allowed: true or false, or null"]),
    # values the model or Lightning refused only after the run directory was made
    (["model.init_params=kmean"], ["model.init_params='kmean' is not allowed",
                                   "allowed: kmeans, k-means++, random, random_from_data"]),
    (["trainer.accelerator=cpuu"], ["trainer.accelerator='cpuu' is not allowed", "allowed: cpu, gpu, cuda, auto"]),
    (["trainer.devices=0"], ["trainer.devices=0 is not allowed", "allowed: an integer >= 1, or a list of them, or auto"]),
    (["trainer.num_nodes=0"], ["trainer.num_nodes=0 is not allowed", "allowed: an integer >= 1"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1 is not allowed", "allowed: a number >= 0, or null"]),
    (["trainer.deterministic=maybe"], ["trainer.deterministic='maybe' is not allowed", "allowed: true or false, or warn"]),
])
def test_bad_value_is_one_line(args, needles, tmp_path):
    assert_one_error_line(cli(args, tmp_path), tmp_path, *needles)


@pytest.mark.parametrize("args, expected", [
    (["experiment=mnist10k_em,mnist10k_dagmm", "data.limit_train=2000", "-m"],
     "dgmm_lab: error: data.limit_train=2000 is a key of the swept choices (experiment=mnist10k_em,mnist10k_dagmm) "
     "but not of the default config, and Hydra composes the sweep itself before those choices; write "
     "++data.limit_train=2000 to set it in every job"),
    (["model=deep_gmm", "objective=dagmm", "backbone.activation=sigmoid"],
     "dgmm_lab: error: backbone.activation='sigmoid' is not allowed; allowed: relu, tanh"),
    (["model=deep_gmm", "objective=dagmm", "objective.lambda_enrgy=0.1,0.2", "-m"],
     "dgmm_lab: error: objective.lambda_enrgy is not a key of the config; did you mean objective.lambda_energy? "
     "allowed under objective: dropout, error_features, estimation_hidden, lambda_cov, lambda_energy"),
    (["model=deep_gmm", "objective=dagmm", "model.lambda_energy=0.2"],
     "dgmm_lab: error: model.lambda_energy is not a key of the config; it is now objective.lambda_energy"),
    (["model=deep_gmm", "+objective.lambda_enrgy=0.2"],
     "dgmm_lab: error: objective.lambda_enrgy is not a setting of dgmm_lab.objectives.nll.NLLObjective; "
     "allowed: min_scale, n_init"),
    (["objective=dagmm"], "dgmm_lab: error: objective is a setting of model=deep_gmm only"),
    (["hparams_search=dagmm", "objective=nll"],
     "dgmm_lab: error: hparams_search=dagmm searches objective.lambda_energy, which this run's config does not have"),
    (["trainer.max_epoch=3"], "dgmm_lab: error: trainer.max_epoch is not a key of the config; "
                              "did you mean trainer.max_epochs? allowed under trainer: "),
    (["kk=3"], "dgmm_lab: error: kk is not a key of the config; did you mean k? allowed at the top level: "),
    # a key of another option of the group: the message names the option chosen and the one to choose
    (["model=deep_gmm", "objective=dagmm", "objective.pretrain_epochs=3"],
     "dgmm_lab: error: objective.pretrain_epochs is not a key of objective=dagmm; it is a setting of objective=vade; "
     "allowed under objective: dropout, error_features, "),
    (["data.flatten=true"], "dgmm_lab: error: data.flatten is not a key of data=synthetic; it is a setting of "
                            "data=mnist; allowed under data: batch_size, "),
    # a value out of the other option's range: the missing key is what is wrong, not the value
    (["data.val_size=-1"], "dgmm_lab: error: data.val_size is not a key of data=synthetic; it is a setting of "
                           "data=mnist and data=mnist_halves; allowed under data: batch_size, "),
    (["+model.tool=1e-3"], "dgmm_lab: error: model.tool is not a setting of dgmm_lab.models.em_gmm.EMGMM; "
                           "did you mean model.tol? allowed: n_components, "),
    (["foo"], "dgmm_lab: error: 'foo' is not an override (Error parsing override 'foo'); allowed: key=value"),
    (["+model.foo=1"], "dgmm_lab: error: model.foo is not a setting of dgmm_lab.models.em_gmm.EMGMM; "
                       "allowed: n_components, covariance_type, tol, "),
    # Hydra's own keys: a single run's composition includes them (composition.served_from)
    (["hydra.run.dirr=x"], "dgmm_lab: error: hydra.run.dirr is not a key of the config; did you mean hydra.run.dir? "
                           "allowed under hydra.run: dir"),
    (["hydra.job.chdir=maybe"], "dgmm_lab: error: hydra.job.chdir=maybe: Value 'maybe' is not a valid bool"),
    (["hydra/launcher=nope"], "dgmm_lab: error: In 'hydra/config': Could not find 'hydra/launcher/nope' "
                              "Available options in 'hydra/launcher': basic joblib submitit_local submitit_slurm"),
])
def test_unknown_key_is_one_line_with_the_allowed_keys(args, expected, tmp_path):
    """Hydra's own five-line composition errors (exit 1) become one line (exit 2)."""
    line = assert_one_error_line(cli(args, tmp_path), tmp_path)
    assert line.startswith(expected), line


def test_bad_sweep_point_stops_the_sweep_before_any_job(tmp_path):
    # the bad value is the second point: without the check the first job would train first
    result = run_cli(["data.batch_size=256,0", *FAST, f"hydra.sweep.dir={tmp_path / 'out'}", "-m"], timeout=120)
    assert_one_error_line(result, tmp_path, "data.batch_size=0 is not allowed; allowed: an integer >= 1")


@pytest.mark.parametrize("args, needle", [
    (["model=em_gmm", "trainer.precision=32-true,bf16-mixed"], "trainer.precision=bf16-mixed is not allowed with model=em_gmm"),
    (["model=deep_gmm", "objective=vade,dagmm", "trainer.precision=bf16-mixed"],
     "trainer.precision=bf16-mixed is not allowed with objective=dagmm"),
])
def test_a_precision_a_later_sweep_point_cannot_have_stops_the_sweep_before_any_job(args, needle, tmp_path):
    # the first point is fine and would train; from a fresh directory, as a user runs it
    result = run_cli([*args, *FAST, "-m"], cwd=tmp_path, timeout=120)
    assert_one_error_line(result, tmp_path, needle)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, message", [
    (["seed=1,abc"], "seed='abc' is not allowed"),
    (["data.val_fraction=range(0.5,2,1)"], "data.val_fraction=1.5 is not allowed"),
    (["+data.eval_batch_size=0"], "data.eval_batch_size=0 is not allowed"),
])
def test_sweep_points_are_checked_before_any_job(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_override_ranges(args)


@pytest.mark.parametrize("args", [["seed=${oc.env:SEED}"], ["data.val_fraction=interval(0,0.5)"], ["seed=1,2,3"],
                                  ["trainer.max_epochs=null"], ["model.tol=1e-4"]])
def test_sweep_points_that_pass_before_composing(args):
    check_override_ranges(args)  # interpolations and drawn intervals are checked once composed


# the neighbours take the same path (check_config, before anything is built): checked in-process
@pytest.mark.parametrize("args, message", [
    (["data.batch_size=-3"], "data.batch_size=-3 is not allowed; allowed: an integer >= 1"),
    (["seed=-1"], "seed=-1 is not allowed; allowed: an integer in 0..4294967295"),
    (["seed=1.5"], "seed=1.5 is not allowed"),
    (["num_threads=0"], "num_threads=0 is not allowed; allowed: an integer >= 1"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs=-2 is not allowed; allowed: an integer >= -1, or null"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 is not allowed"),
    (["data.test_fraction=-0.1"], "data.test_fraction=-0.1 is not allowed; allowed: a number in [0, 1)"),
    (["data.val_fraction=1"], "data.val_fraction=1 is not allowed"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"],
     "data.val_fraction=0.5 with data.test_fraction=0.5 leaves no training samples; allowed: val_fraction + test_fraction < 1"),
    (["+data.eval_batch_size=0"], "data.eval_batch_size=0 is not allowed; allowed: an integer >= 1, or null"),
    (["data.n_samples=0"], "data.n_samples=0 is not allowed"),
    (["data=mnist", "data.val_size=60000"], "data.val_size=60000 is not allowed; allowed: an integer in 0..59999"),
    (["data=mnist", "data.limit_train=0"], "data.limit_train=0 is not allowed; allowed: an integer >= 1, or null"),
    (["model.n_init=0"], "model.n_init=0 is not allowed; allowed: an integer >= 1"),
    (["model.reg_covar=-1"], "model.reg_covar=-1 is not allowed; allowed: a number >= 0"),
    (["model.tol=-1"], "model.tol=-1 is not allowed"),
    (["model.max_iter=0"], "model.max_iter=0 is not allowed"),
    (["model=deep_gmm", "model.optimizer.lr=0"], "model.optimizer.lr=0 is not allowed; allowed: a number > 0"),
    (["data.batch_size=true"], "data.batch_size=True is not allowed"),
])
def test_bad_neighbouring_value_is_refused(args, message, tmp_path):
    cfg = compose_config(args, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(cfg)


@pytest.mark.parametrize("args", [[], ["trainer.max_epochs=-1"], ["trainer.max_epochs=0"], ["data.val_fraction=0"],
                                  ["model=deep_gmm", "trainer.max_epochs=null"], ["data=mnist", "data.val_size=0"]])
def test_good_values_pass(args, tmp_path):
    check_config(compose_config(args, tmp_path))


@pytest.mark.parametrize("name, write, needles", [
    ("empty.csv", lambda p: p.write_text(""), ["is an empty file (0 bytes)", "allowed: a header line"]),
    ("empty.npz", lambda p: np.savez(p), ["holds no arrays", "allowed: arrays by key, features X"]),
    ("zero.npz", lambda p: p.write_bytes(b""), ["is an empty file (0 bytes)"]),
])
def test_bad_file_is_one_line(name, write, needles, tmp_path):
    path = tmp_path / name
    write(path)
    assert_one_error_line(cli(["data=array", f"data.path={path}"], tmp_path), tmp_path, f"data.path='{path}'", *needles)


@pytest.mark.parametrize("name, write, message", [
    ("header.csv", lambda p: p.write_text("a,b\n"), "holds no samples (0 rows)"),
    ("blank.csv", lambda p: p.write_text("\n\n"), "has no header line"),
    ("ragged.csv", lambda p: p.write_text("a,b\n1,2\n3\n"), "row 3 of ragged.csv has 1 fields and the header 2"),
    ("rows.npz", lambda p: np.savez(p, X=np.zeros((0, 3))), "holds no samples (0 rows)"),
    ("junk.npz", lambda p: p.write_bytes(b"not a zip" * 9), "is not a .npz file (not a zip archive)"),
    ("junk.npy", lambda p: p.write_bytes(b"not numpy" * 9), "is not a .npy file (no NUMPY header)"),
    ("junk.mat", lambda p: p.write_bytes(b"not matlab" * 9), "is not a readable .mat file"),
    ("text.npz", lambda p: np.savez(p, X=np.array([["a", "b"]])), "the features are not numeric"),
])
def test_bad_file_is_one_message(name, write, message, tmp_path):
    write(tmp_path / name)
    with pytest.raises(ConfigError, match=re.escape(message)):
        ArrayDataModule(str(tmp_path / name)).setup()


def test_truncated_mnist_names_the_file_and_its_checksum(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:  # a download that broke off: valid gzip headers, cut short
        (raw / name).write_bytes(gzip.compress(bytes(100_000))[:2000])
    result = cli(["data=mnist", f"paths.data_dir={tmp_path / 'mnist'}", f"paths.cache_dir={tmp_path / 'cache'}",
                  # offline here and in CI alike: torchvision must not fetch a fresh copy
                  "+data.download=false"], tmp_path)
    line = assert_one_error_line(result, tmp_path, f"MNIST file {raw / RAW_FILES[0]} is corrupt",
                                 "md5 checksum", "not torchvision's f68b3c2dcbeaaa9fbdd348bbdeb94873")
    assert "not found" not in line


def test_damaged_extracted_mnist_file_is_named(tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(100))
    assert "t10k-labels-idx1-ubyte is damaged: 100 bytes, the original has 10008" in damaged_raw_file([tmp_path])
    assert damaged_raw_file([tmp_path / "nothing"]) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"features": "data", "label": 4}, "data.label=4 is not a column of array 'data' of d.npz (shape (30, 4)); "
                                       "allowed: column indices in -4..3"),
    ({"features": "data", "label": -5}, "data.label=-5 is not a column"),
    ({"features": "data", "label": [2, 3]}, "data.label=[2, 3] is not allowed; allowed: a key of the file, a column index"),
    ({"features": "meta", "label": -1}, "data.label=-1 picks columns, and array 'meta' of d.npz has shape (3,)"),
    ({"features": [0, 3], "label": 3}, "no key 'X'"),  # indices without a key: of X, which d.npz lacks
    ({"features": "data", "label": "y"}, "data.label='y' is not a key of d.npz; keys: data, meta"),
])
def test_bad_column_index_is_one_message(kwargs, message, tmp_path):
    np.savez(tmp_path / "d.npz", data=np.ones((30, 4)), meta=np.ones(3))
    with pytest.raises(ValueError, match=re.escape(message)):
        ArrayDataModule(str(tmp_path / "d.npz"), **kwargs).setup()


def test_bad_column_index_on_the_cli(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((30, 4)))
    assert_one_error_line(cli(["data=array", f"data.path={tmp_path / 'd.npy'}", "data.label=7"], tmp_path),
                          tmp_path, "data.label=7 is not a column of the array in d.npy", "-4..3")


def test_em_without_an_epoch_limit_stops_at_max_iter(tmp_path):
    # -1 is Lightning's 'no limit'; EM still stops, here at model.max_iter (tol 0 never converges)
    metrics = train_in_process(["trainer.max_epochs=-1", "model.max_iter=4", "model.tol=0", "test_ckpt=last", *FAST],
                               tmp_path)
    assert metrics["train/n_iter"] == 4


@pytest.mark.parametrize("args, needle", [
    (["backbone=mlp"], "backbone='mlp' does not fit model=em_gmm; allowed backbones for it: identity, pca"),
    (["objective.lambda_energy=0.1"], "objective.lambda_energy belongs to model=deep_gmm"),
    (["+objective.lambda_energy=0.1"], "objective.lambda_energy belongs to model=deep_gmm"),
    (["model=deep_gmm", "+model.optimizer.momentum=0.9"], "model.optimizer.momentum is not a setting of torch.optim.Adam"),
    (["model=deep_gmm", "model.optimizer.momentum=0.9"], "use +model.optimizer.momentum=..."),
    (["model=deep_gmm", "model.optimizer._target_=torch.optim.SGDD"],
     "model.optimizer._target_='torch.optim.SGDD' cannot be imported"),
    (["model=deep_gmm", "+model.optimizer.foreach=true", "+model.optimizer.fused=true"],
     "model.optimizer.fused=true with model.optimizer.foreach=true is not allowed; allowed: one of them"),
    (["model=deep_gmm", "+model.optimizer.fused=true", "model.optimizer._target_=torch.optim.RMSprop"],
     "model.optimizer.fused is not a setting of torch.optim.RMSprop; allowed: lr, "),
    (["model=deep_gmm", "+model.optimizer.fused=true", "model.optimizer._target_=torch.optim.RMSprop"],
     "(~model.optimizer.fused drops it)"),
    (["model=deep_gmm", "model.scheduler.T_max=0"], "model.scheduler.T_max=0 is not allowed; allowed: an integer >= 1"),
    (["model=deep_gmm", "model.lambda_energy=0.5"], "it is now objective.lambda_energy (objective=dagmm)"),
    (["model=deep_gmm", "objective=vade", "objective.likelihood=bernoulli"],
     "objective.likelihood=bernoulli models values in [0, 1], and data=SyntheticDataModule has values in"),
])
def test_objective_and_optimiser_mistakes_are_one_line_and_leave_no_run_dir(args, needle, tmp_path):
    assert_one_error_line(cli(args, tmp_path), tmp_path, needle)
    assert not list((tmp_path / "out").rglob("status.json")) and not list((tmp_path / "out").rglob(".hydra"))
