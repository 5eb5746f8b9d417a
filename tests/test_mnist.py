"""Real MNIST (the four canonical files, md5-verified by torchvision)."""

import numpy as np
import pytest
import torch

from conftest import FAST, train_in_process
from dgmm_lab.data import MNISTDataModule


def test_mnist_splits_and_scaling(mnist_dir, tmp_path):
    dm = MNISTDataModule(data_dir=mnist_dir, cache_dir=str(tmp_path), val_size=5000)
    dm.setup()
    x, y = dm.tensors("train")
    assert x.shape == (55000, 1, 28, 28) and len(dm.tensors("val")[0]) == 5000
    assert len(dm.tensors("test")[0]) == 10000
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    flat = MNISTDataModule(data_dir=mnist_dir, cache_dir=str(tmp_path), flatten=True,
                           scaling="standardize", limit_train=1000)
    flat.setup()
    xs, _ = flat.tensors("train")
    assert xs.shape == (1000, 784)
    assert float(xs.mean()) == pytest.approx(0.0, abs=1e-5) and float(xs.std()) == pytest.approx(1.0, abs=1e-3)


def test_transductive_mnist_trains_on_all_70k_images_and_scores_them(mnist_dir, tmp_path):
    inductive = MNISTDataModule(data_dir=mnist_dir, cache_dir=str(tmp_path), flatten=True)
    every = MNISTDataModule(data_dir=mnist_dir, cache_dir=str(tmp_path), flatten=True, transductive=True)
    (x, y), (x_test, y_test) = every.tensors("train"), every.tensors("test")
    assert x.shape == (70000, 784) and torch.equal(x_test, x) and torch.equal(y_test, y)
    assert torch.equal(every.tensors("val")[0], inductive.tensors("val")[0])
    # the 55k, the 5k and the unseen 10k of the inductive splits, each once
    parts = [inductive.tensors(s)[0] for s in ("train", "val", "test")]
    assert torch.equal(x, torch.cat(parts))
    assert every.describe_splits() == ("data: 70000 training, 5000 validation, 70000 test samples "
                                       "(transductive: the test split is the training split)")
    for value in ("yes", 1, 0):  # 1 == True in Python: refused all the same
        with pytest.raises(ValueError, match=f"data.transductive={value!r} is not allowed; allowed: true, false"):
            MNISTDataModule(data_dir=mnist_dir, transductive=value)


def test_missing_mnist_says_where_the_files_go(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz.*nowhere/MNIST/raw"):
        dm.setup()


@pytest.mark.parametrize("backbone, objective", [("mlp", "dagmm"), ("conv", "vade"),
                                                 ("resnet", "dagmm"), ("flow", "nll")])
def test_image_backbones_fast_dev_run(backbone, objective, mnist_dir, tmp_path):
    extra = ["backbone.dequantize=true", "backbone.n_layers=2"] if backbone == "flow" else []
    train_in_process(["model=deep_gmm", "data=mnist", f"backbone={backbone}", f"objective={objective}",
                      "data.limit_train=256", "data.limit_test=64", "data.batch_size=32", "k=10",
                      "covariance=diag", "+trainer.fast_dev_run=true", "logger=csv", *FAST, *extra],
                     tmp_path)


def test_vade_pretraining_on_rotated_and_shifted_digits_is_cached_apart(mnist_dir, tmp_path):
    cache = tmp_path / "cache"
    common = ["model=deep_gmm", "objective=vade", "objective.likelihood=bernoulli", "backbone=mlp", "data=mnist",
              "data.flatten=true",
              "data.limit_train=512", "data.limit_test=64", "k=10", "covariance=diag", "objective.pretrain_epochs=1",
              "trainer.max_epochs=1", "logger=csv", f"paths.cache_dir={cache}", *FAST]
    plain = train_in_process(common, tmp_path / "plain")
    augmented = train_in_process([*common, "objective.pretrain_rotation=10", "objective.pretrain_shift=0.1"],
                                 tmp_path / "augmented")
    assert len(list((cache / "pretrain").glob("pretrain-*.pt"))) == 2
    # same seed, same data: only the augmentation differs, and it changes the autoencoder
    assert augmented["start/nmi"] != plain["start/nmi"]


def test_vade_epochs_on_rotated_and_shifted_digits_share_the_pretraining(mnist_dir, tmp_path):
    cache = tmp_path / "cache"
    common = ["model=deep_gmm", "objective=vade", "objective.likelihood=bernoulli", "backbone=mlp", "data=mnist",
              "data.flatten=true", "data.limit_train=512", "data.limit_test=64", "k=10", "covariance=diag",
              "objective.pretrain_epochs=1", "trainer.max_epochs=2", "logger=csv", f"paths.cache_dir={cache}", *FAST]
    plain = train_in_process(common, tmp_path / "plain")
    augmented = train_in_process([*common, "objective.rotation=10", "objective.shift=0.1"], tmp_path / "augmented")
    # the VaDE steps' augmentation is not the pre-training's: one autoencoder, one start
    assert len(list((cache / "pretrain").glob("pretrain-*.pt"))) == 1
    assert augmented["start/nmi"] == plain["start/nmi"]
    # ... and the steps saw other images
    assert augmented["test/nll"] != plain["test/nll"]


@pytest.mark.slow
def test_em_on_pca_features_clusters_mnist(mnist_dir, tmp_path):
    m = train_in_process(["experiment=em_mnist_pca", "data.limit_train=10000",
                          "trainer.enable_progress_bar=false"], tmp_path)
    assert m["test/acc"] > 0.5  # k-means level is about 0.53; chance is 0.1


@pytest.mark.slow
def test_vade_clusters_mnist_well_above_chance(mnist_dir, tmp_path):
    m = train_in_process(["model=deep_gmm", "objective=vade", "objective.likelihood=bernoulli", "backbone=mlp", "data=mnist",
                          "data.limit_train=10000", "k=10", "covariance=diag",
                          "objective.pretrain_epochs=10", "trainer.max_epochs=10",
                          f"paths.cache_dir={tmp_path}", "trainer.enable_progress_bar=false"], tmp_path)
    assert m["test/acc"] > 0.45


@pytest.mark.slow
def test_vade_preset_on_briefly_pretrained_codes_does_not_collapse(mnist_dir, tmp_path, caplog):
    # 10 pre-training epochs on 10k images leave code directions that hardly vary; with the
    # EM fit's variances there (1e-4) the first epoch put every code into one component
    # (test accuracy 0.11-0.21 from starts of 0.43-0.47, three seeds)
    m = train_in_process(["experiment=vade_mnist", "data.limit_train=10000", "objective.pretrain_epochs=10",
                          "objective.pretrain_restarts=1", "trainer.max_epochs=1", f"paths.cache_dir={tmp_path}",
                          "trainer.enable_progress_bar=false"], tmp_path)
    assert m["start/acc"] > 0.35 and m["test/acc"] > 0.3
    assert m["train/min_covariance_eigenvalue"] > 5e-4
    assert "were raised" in caplog.text


def test_a_collapsed_vade_run_is_said_out_loud(mnist_dir, tmp_path, caplog):
    # 2 pre-training epochs on 1000 images: every test image ends in one component (test
    # accuracy 0.13); without labels the cluster shares are what shows it
    m = train_in_process(["experiment=vade_mnist", "data.limit_train=1000", "data.val_size=500", "data.limit_test=500",
                          "objective.pretrain_epochs=2", "objective.pretrain_restarts=1", "objective.n_init=1",
                          "trainer.max_epochs=3",
                          f"paths.cache_dir={tmp_path}", "trainer.enable_progress_bar=false"], tmp_path)
    assert m["test/effective_clusters"] < 2
    assert "effective clusters of K=10" in caplog.text and "collapsed" in caplog.text


def test_flow_reports_bits_per_dim_on_dequantised_pixels(mnist_dir, tmp_path):
    m = train_in_process(["model=deep_gmm", "data=mnist", "backbone=flow", "objective=nll", "backbone.dequantize=true",
                          "backbone.n_layers=2", "data.limit_train=512", "data.limit_test=256", "k=2",
                          "covariance=diag", "trainer.max_epochs=1", "logger=csv", *FAST], tmp_path)
    # bits/dim of a valid density of 8-bit pixels lies between 0 and 8
    assert 0 < m["test/bits_per_dim"] < 8


@pytest.mark.slow
def test_vade_preset_starts_from_a_better_em_fit_than_the_median_start(mnist_dir, tmp_path):
    # The likeliest of several EM fits on autoencoder codes tends to merge two digits and split
    # a third: on these codes (20k images, 15 epochs) it sits at the median start (0.751
    # against 0.751 with objective.init_selection=likelihood, so this test fails), while the
    # most evenly weighted fit was 0.07 above it on codes of seeds 0 and 1.
    # The median is that of 16 single fits with the objective's EM settings.
    from conftest import compose_config
    from dgmm_lab.metrics import clustering_metrics
    from dgmm_lab.mixture.estimator import GaussianMixture
    from dgmm_lab.models.pretraining import pretrain
    from dgmm_lab.training import build

    cfg = compose_config(["experiment=vade_mnist", "seed=0", "data.limit_train=20000", "objective.pretrain_epochs=15",
                          f"paths.cache_dir={tmp_path}"], tmp_path)
    datamodule, model = build(cfg)
    vade = model.objective
    torch.manual_seed(0)
    pretrain(vade, datamodule, torch.device("cpu"), 0, True)
    x, y = datamodule.tensors("train")
    vade.initialize(x, torch.Generator().manual_seed(0))  # the preset's 16 starts and its choice among them
    with torch.no_grad():
        codes = vade.encode(x)[0]
        chosen = clustering_metrics(y.numpy(), vade.mixture().weighted_log_prob(codes).argmax(1).numpy())["acc"]
    codes = codes.double().numpy()
    starts = [clustering_metrics(y.numpy(), GaussianMixture(10, covariance_type="full", reg_covar=1e-4, max_iter=200,
                                                           random_state=r).fit(codes).predict(codes))["acc"]
              for r in range(16)]
    assert chosen >= float(np.median(starts)) + 0.03, (chosen, sorted(starts))
