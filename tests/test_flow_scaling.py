"""The flow's dequantisation assumes pixels in [0, 1]: standardised data is refused in one line."""

import numpy as np

from conftest import FAST, run_cli


def test_dequantizing_flow_on_standardized_data_is_one_line(tmp_path):
    np.savez(tmp_path / "x.npz", X=np.random.default_rng(0).uniform(size=(200, 4)))
    result = run_cli(["model=deep_gmm", "objective=nll", "backbone=flow", "backbone.dequantize=true", "data=array",
                      f"data.path={tmp_path / 'x.npz'}", "data.scaling=standardize", "k=2", *FAST,
                      f"paths.log_dir={tmp_path}"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("dgmm_lab: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "backbone=flow" in lines[0] and "data.scaling=standardize" in lines[0], lines[0]
    assert "allowed: data.scaling=unit" in lines[0] and "backbone.dequantize=false" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
