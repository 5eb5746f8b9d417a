"""VaDE's pre-training cache shared by parallel jobs: one pre-trains, the others wait for its
file and load it, whole."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PRETRAIN = ["model=deep_gmm", "objective=vade", "debug=fast", "data.n_samples=1500", "objective.pretrain_epochs=2",
            "trainer.max_epochs=1"]


@pytest.mark.slow
def test_parallel_jobs_pretrain_once_and_load_the_same_autoencoder(tmp_path):
    # as a local parallel launcher starts a sweep's jobs: all at once, one cache dir
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    jobs = {name: subprocess.Popen([sys.executable, "-m", "dgmm_lab.train", *PRETRAIN, f"k={k}",
                                    f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / name}"],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, k in (("a", 2), ("b", 2), ("c", 3))}
    logs = {name: job.communicate(timeout=300)[0] for name, job in jobs.items()}
    assert all(job.returncode == 0 for job in jobs.values()), logs
    trained = [name for name, log in logs.items() if "pre-training epoch 1" in log]
    loaded = [name for name, log in logs.items() if "pre-trained autoencoder loaded from" in log]
    assert len(trained) == 1 and sorted(trained + loaded) == ["a", "b", "c"], logs
    assert [p.suffix for p in sorted((tmp_path / "cache" / "pretrain").iterdir())] == [".lock", ".pt"]
    # a job that loaded starts from the autoencoder the other trained: same K, same results
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}


def test_bf16_and_fused_adam_train_the_autoencoder_under_their_own_cache_key(tmp_path):
    # the stage trains as the model does (fused Adam, bfloat16 autocast): another autoencoder,
    # so another cache file
    from conftest import train_in_process

    cache = tmp_path / "cache"
    runs = {"f32": [], "fast": ["trainer.precision=bf16-mixed", "+model.optimizer.fused=true"]}
    metrics = {}
    for name, extra in runs.items():
        metrics[name] = train_in_process([*PRETRAIN, "k=2", f"paths.cache_dir={cache}", *extra], tmp_path / name)
    assert len(list((cache / "pretrain").glob("*.pt"))) == 2  # the second run did not load the first's
    assert all(math.isfinite(m["test/nll"]) for m in metrics.values())
    assert metrics["f32"]["test/nll"] != metrics["fast"]["test/nll"]
    # evaluate scores a checkpoint in its run's precision: the run's own test numbers come back
    from dgmm_lab.evaluate import evaluate

    best = next((tmp_path / "fast" / "checkpoints").glob("best-*.ckpt"))
    again = evaluate(best, [], tmp_path / "eval")
    assert again["test/nll"] == metrics["fast"]["test/nll"]


@pytest.mark.parametrize("change", ["data.split_seed=1", "data.separation=3.0"])
def test_training_data_of_the_same_size_but_other_values_pre_trains_anew(change, tmp_path):
    # the key once held the training split's size only: another split or other data of that
    # size loaded an autoencoder trained on different images
    from conftest import train_in_process

    cache = tmp_path / "cache"
    first = train_in_process([*PRETRAIN, "k=2", f"paths.cache_dir={cache}"], tmp_path / "first")
    other = train_in_process([*PRETRAIN, "k=2", f"paths.cache_dir={cache}", change], tmp_path / "other")
    assert len(list((cache / "pretrain").glob("*.pt"))) == 2
    assert first["test/nll"] != other["test/nll"]


# overlapping clusters: starts whose largest posteriors are not all 1
OVERLAPPING = ["k=3", "data.separation=1.0"]


def test_pretraining_restarts_keep_the_most_confident_start_and_restart_0_is_the_run_without(tmp_path):
    from conftest import train_in_process

    cache = tmp_path / "cache"
    two = train_in_process([*PRETRAIN, *OVERLAPPING, f"paths.cache_dir={cache}", "objective.pretrain_restarts=2"],
                           tmp_path / "two")
    assert len(list((cache / "pretrain").glob("*.pt"))) == 2  # each restart cached on its own
    confidences = [two[f"start/autoencoder_{r}/confidence"] for r in range(2)]
    assert confidences[0] != confidences[1]  # other initial weights, another autoencoder
    kept = int(two["start/autoencoder"])
    assert confidences[kept] == max(confidences) == two["start/confidence"]
    assert two[f"start/autoencoder_{kept}/acc"] == two["start/acc"]  # the kept start is the one trained
    # restart 0 is the autoencoder and the start of the run without restarts (loaded from the cache)
    one = train_in_process([*PRETRAIN, *OVERLAPPING, f"paths.cache_dir={cache}"], tmp_path / "one")
    assert one["start/confidence"] == confidences[0] and one["start/acc"] == two["start/autoencoder_0/acc"]
    if kept == 0:
        assert one["test/nll"] == two["test/nll"]
    else:
        assert one["test/nll"] != two["test/nll"]
