"""EM at scale: no (N, K, D) array on any path of the estimator, from its default
initialisation to predict_proba, measured as the peak memory of a fit in its own process."""

import json
import os
import subprocess
import sys

import pytest

FIT = """
import json, re, sys, warnings
import numpy as np
from dgmm_lab import GaussianMixture
n, d, k = {n}, {d}, {k}
x = np.random.default_rng(0).standard_normal((n, d))
x[:, 0] += np.arange(n) % k * 3.0  # k blobs along the first axis
before_kb = int(re.search(r"VmRSS:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
warnings.simplefilter("ignore")  # 2 iterations do not converge
gm = GaussianMixture(k, covariance_type="full", max_iter=2, random_state=0{extra}).fit(x)
proba = gm.predict_proba(x)
# this process's own high-water mark (ru_maxrss would keep the parent's across exec)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
json.dump({{"peak_bytes": peak_kb * 1024, "before_fit_bytes": before_kb * 1024, "data_bytes": x.nbytes,
           "finite": bool(np.isfinite(gm.means_).all() and np.isfinite(proba).all()),
           "rows_sum_to_one": float(abs(proba.sum(1) - 1).max())}}, sys.stdout)
"""


def peak_of_fit(n: int, d: int, k: int, extra: str = "", env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", FIT.format(n=n, d=d, k=k, extra=extra)],
                         capture_output=True, text=True, timeout=1800, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_a_million_rows_64_components_full_fit_within_the_data_plus_2_gb():
    """The issue's trial: 1,000,000 x 64 float64, K=64, full, default init, 2 iterations.
    The initialisation's statistics alone used to ask for a 32 GB (N, K, D) array."""
    result = peak_of_fit(1_000_000, 64, 64)
    assert result["finite"] and result["rows_sum_to_one"] < 1e-9
    assert result["peak_bytes"] <= result["data_bytes"] + 2 * 2**30, result


def test_the_peak_of_a_full_fit_grows_with_n_times_k_not_n_times_k_times_d():
    """The same fit at 100,000 rows: an (N, K, D) float64 array would be 3.3 GB.

    This measures what the fit allocates at once, so glibc's moving mmap threshold is held
    fixed: with it moving, freed work arrays stay in the heap and the high-water mark of
    identical runs varied by up to 1.1 GB (0.8-1.9 GB; one CI run failed on it)."""
    result = peak_of_fit(100_000, 64, 64, env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    assert result["peak_bytes"] - result["before_fit_bytes"] <= 0.5 * 2**30, result
