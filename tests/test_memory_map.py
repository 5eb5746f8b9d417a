"""``data=array`` with a memory-mapped ``.npy`` (``data.memory_map``): the Lightning path reads
batches from the file, never the whole of it, and trains to the numbers of the loaded file."""

import json
import subprocess
import sys

import numpy as np
import pytest


def train(args, cwd, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "dgmm_lab.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)


def labelled_blobs(path, n=6000, dtype=np.float64):
    """Three blobs in 5 features, a scaled sixth feature and the label as the last column."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 6)) * 0.5 + label[:, None] * 2.0
    x[:, 5] = rng.standard_normal(n) * 3 + 1
    np.save(path, np.column_stack([x, label]).astype(dtype))


def results(run_dir) -> dict:
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if "seconds" not in k}


@pytest.mark.parametrize("args, dtype", [
    (["model=em_gmm", "k=3"], np.float64),
    (["model=em_gmm", "k=3", "covariance=diag", "data.scaling=minmax", "data.features=[0,1,2,3,4]"], np.float32),
    (["model=deep_gmm", "objective=dagmm", "data.normal_label=0", "trainer.max_epochs=2"], np.float32),
], ids=["em", "em-minmax-columns", "dagmm-anomaly"])
def test_a_mapped_file_trains_to_the_numbers_of_the_loaded_file(args, dtype, tmp_path):
    labelled_blobs(tmp_path / "blobs.npy", dtype=dtype)
    common = ["data=array", "data.path=blobs.npy", "data.label=-1", *args]
    for mode in ("false", "true"):
        done = train([*common, f"data.memory_map={mode}", f"hydra.run.dir=run_{mode}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    loaded, mapped = results(tmp_path / "run_false"), results(tmp_path / "run_true")
    assert mapped.keys() == loaded.keys() and "test/nll" in mapped
    # the scaling's sums run in numpy passes over the file instead of one torch reduction:
    # equal here to the last digit, allowed to differ in rounding
    assert mapped == pytest.approx(loaded, rel=1e-9, abs=1e-12)


def test_memory_map_on_a_file_that_is_not_npy_is_one_line(tmp_path):
    np.savetxt(tmp_path / "rows.csv", np.ones((10, 2)), delimiter=",", header="a,b", comments="")
    done = train(["data=array", "data.path=rows.csv", "data.memory_map=true"], tmp_path)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("dgmm_lab:")] == [
        f"dgmm_lab: error: data.memory_map=true reads a .npy file; data.path={str(tmp_path / 'rows.csv')!r} "
        "is not one; allowed: a .npy file (np.save), or data.memory_map=false"]
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


@pytest.mark.slow
def test_an_em_run_on_a_2_gb_file_never_holds_the_file(tmp_path):
    """8M x 64 float32 (2 GB) through the Lightning EM module: the process's high-water mark
    (torch, Lightning and every page of the file it mapped included) stays below the file's
    size; loading it would take twice that (float64) before the splits.  Diagonal
    covariances: the same batches and maps as full ones at a 64th of the E-step's work."""
    n, d = 8_000_000, 64
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 500_000):
        block = np.random.default_rng(start).standard_normal((min(500_000, n - start), d), dtype=np.float32)
        block[:, 0] += (np.arange(start, start + len(block)) % 4) * 4.0
        big[start:start + len(block)] = block
    big.flush()
    del big
    # its own high-water mark, read by the training process as it exits
    probe = ("import atexit, re, runpy, sys; out = sys.argv.pop(1); atexit.register(lambda: open(out, 'w').write("
             "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))); "
             "runpy.run_module('dgmm_lab.train', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "peak_kb"), "model=em_gmm", "data=array",
                           "data.path=big.npy", "k=4", "covariance=diag", "data.batch_size=65536", "trainer.max_epochs=1",
                           "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int((tmp_path / "peak_kb").read_text()) * 1024
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    path.unlink()
    assert np.isfinite(metrics["test/nll"])
    assert peak < n * d * 4, f"peak {peak / 2**30:.2f} GiB for a {n * d * 4 / 2**30:.2f} GiB file"
