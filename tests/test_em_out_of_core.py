"""EM on data larger than memory: a memory-mapped X (np.memmap, np.load(mmap_mode), a .npy
path) is read a batch at a time, gives the in-memory fit on the same rows, and the fitting
process's peak memory stays far below the file's size."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dgmm_lab import GaussianMixture

FIT = """
import json, re, sys, warnings
import numpy as np
from dgmm_lab import GaussianMixture
warnings.simplefilter("ignore")  # 1 or 2 iterations do not converge
X = {path!r} if {mapped} else np.load({path!r})
gm = GaussianMixture({k}, covariance_type="full", max_iter={iters}, random_state=0, init_max_samples={m}).fit(X)
proba = gm.predict_proba(X)
# this process's own high-water mark (ru_maxrss would keep the parent's across exec)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
json.dump({{"peak_bytes": peak_kb * 1024, "means": gm.means_.tolist(), "lower_bound": gm.lower_bound_,
           "proba_head": proba[:1000].tolist()}}, sys.stdout)
"""


def write_blobs(path, n: int, d: int, k: int, dtype=np.float32) -> None:
    """An (n, d) .npy file of k blobs along the first axis, written in blocks (never whole)."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, d)})
        for start in range(0, n, 2**20):
            block = rng.standard_normal((min(2**20, n - start), d)).astype(dtype)
            block[:, 0] += np.arange(start, start + len(block)) % k * 3.0
            block.tofile(f)


def fit(X, cov="full", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(4, covariance_type=cov, max_iter=5, random_state=0, init_max_samples=3000,
                               batch_size=7000, **kwargs).fit(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_a_mapped_fit_equals_the_in_memory_fit_on_the_same_rows(tmp_path, cov, dtype):
    path = tmp_path / "x.npy"
    write_blobs(path, 30_000, 6, 4, dtype)
    x = np.load(path)
    ref = fit(x, cov)
    for X in (str(path), np.load(path, mmap_mode="r"), np.memmap(path, dtype, "r", offset=np.load(path, mmap_mode="r").offset, shape=x.shape)):
        got = fit(X, cov)
        assert got.means_.dtype == dtype
        np.testing.assert_allclose(got.means_, ref.means_, rtol=0, atol=1e-8)
        np.testing.assert_allclose(got.covariances_, ref.covariances_, rtol=0, atol=1e-8)
        assert got.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-8)
        np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(x), rtol=0, atol=1e-8)
        assert got.bic(X) == pytest.approx(ref.bic(x), rel=1e-12)


def test_a_mapped_fit_draws_its_start_from_a_sample_and_finds_the_blobs(tmp_path):
    path = tmp_path / "x.npy"
    write_blobs(path, 40_000, 3, 4)
    gm = GaussianMixture(4, random_state=0).fit(str(path))  # default: MAPPED_INIT_SAMPLES rows
    assert sorted(np.round(gm.means_[:, 0]).tolist()) == [0.0, 3.0, 6.0, 9.0]
    assert gm.converged_


def test_bad_values_in_a_mapped_x_are_named_by_row(tmp_path):
    path = tmp_path / "x.npy"
    write_blobs(path, 20_000, 3, 2)
    m = np.load(path, mmap_mode="r+")
    m[12_345, 1] = np.nan
    m.flush()
    del m
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 12345\)"):
        GaussianMixture(2).fit(str(path))
    np.save(path, np.ones((10, 3)))
    gm = GaussianMixture(1).fit(str(path))
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        gm.predict(np.load(path, mmap_mode="r")[:, :2].copy())
    strided = np.lib.format.open_memmap(tmp_path / "wide.npy", "w+", np.float64, (10, 6))
    with pytest.raises(ValueError, match="a strided view"):
        GaussianMixture(1).fit(strided[:, ::2])
    for name, content in (("x.npz", None), ("x.csv", b"a,b\n1,2\n"), ("junk.npy", b"hello")):
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="must name a .npy file|is not a .npy file"):
            GaussianMixture(1).fit(str(tmp_path / name))


def test_a_fortran_ordered_file_is_read_a_batch_at_a_time_as_well(tmp_path):
    path, fortran = tmp_path / "c.npy", tmp_path / "f.npy"
    write_blobs(path, 20_000, 5, 3)
    np.save(fortran, np.asfortranarray(np.load(path)))
    assert np.load(fortran, mmap_mode="r").flags.f_contiguous
    ref, got = fit(str(path)), fit(str(fortran))
    np.testing.assert_array_equal(got.means_, ref.means_)
    np.testing.assert_array_equal(got.predict_proba(str(fortran)), ref.predict_proba(str(path)))


def peak_of_fit(path, k: int, init_rows: int, mapped: bool = True, iters: int = 2) -> dict:
    """A fit of the .npy file at path, mapped or loaded, in a process of its own (both in
    one alike: torch's thread count, set by earlier tests in this one, moves the last digits)."""
    out = subprocess.run([sys.executable, "-c", FIT.format(path=str(path), k=k, m=init_rows, mapped=mapped, iters=iters)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_a_mapped_fit_does_not_hold_the_file(tmp_path):
    """A 400 MB file: the fit's peak stays below the runtime (torch, scikit-learn) plus half
    the file (measured: +130 MB, mostly BLAS buffers and the answers), where reading it
    through the map without releasing its pages adds all 400 MB."""
    path = tmp_path / "x.npy"
    write_blobs(path, 1_600_000, 64, 4)
    baseline = subprocess.run([sys.executable, "-c", "import re, dgmm_lab.mixture.estimator; print(re.search("
                               "r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))"],
                              capture_output=True, text=True, check=True)
    runtime = int(baseline.stdout) * 1024
    result = peak_of_fit(path, 4, 2**15)
    assert result["peak_bytes"] - runtime < path.stat().st_size / 2, (result["peak_bytes"], runtime)


@pytest.mark.slow
def test_a_3_gb_file_is_fitted_within_1_5_gb_and_equals_the_in_memory_fit(tmp_path):
    """The issue's trial: a float32 .npy of 3 GB (12.6M x 64), K=4, full, in its own process:
    peak under 1.5 GiB (measured 1.02 GiB with 2 iterations); then the same rows in memory.
    One iteration: each pass over the file costs about 30 s here, and a second one has the
    first one's batches and peak (the small tests above compare five)."""
    path = tmp_path / "big.npy"
    n = 3 * 2**30 // (4 * 64)
    write_blobs(path, n, 64, 4)
    try:
        result = peak_of_fit(path, 4, 2**16, iters=1)
        assert result["peak_bytes"] < 1.5 * 2**30, result["peak_bytes"]
        ref = peak_of_fit(path, 4, 2**16, mapped=False, iters=1)
        assert ref["peak_bytes"] > 3 * 2**30  # the same fit holding the file
        np.testing.assert_allclose(result["means"], ref["means"], rtol=0, atol=1e-8)
        assert result["lower_bound"] == pytest.approx(ref["lower_bound"], abs=1e-8)
        np.testing.assert_allclose(result["proba_head"], ref["proba_head"], rtol=0, atol=1e-8)
    finally:
        path.unlink()
