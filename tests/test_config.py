"""Bad overrides end before training in one line naming key, value and allowed values."""

import pytest

from conftest import run_cli


@pytest.mark.parametrize("args, expected", [
    (["k=0"], "k=0 must be an integer >= 1"),
    (["covariance=banana"], "covariance='banana' is not allowed; allowed: full, diag, spherical, tied"),
    (["backbone=transformer"], "backbone='transformer' is not a known backbone; allowed: conv, flow, identity, mlp, pca, resnet"),
    (["model=deep_gmm", "objective=gan"], "objective='gan' is not allowed; allowed: nll, dagmm, vade"),
    (["model=deep_gmm", "objective=nll", "backbone=mlp"], "backbone='mlp' does not fit objective='nll'"),
    (["k=5000"], "k=5000 is larger than the number of training samples (2100)"),
    (["paths.data_dir=???", "data=mnist"], "paths.data_dir is required but has no value"),
    (["k=2,0", "covariance=full", "-m"], "k=0 must be an integer >= 1"),
    (["model=em_gmm,nonsense", "-m"], "model='nonsense' is not a known model"),
    # raised by constructors and data loading, reported through the same one line
    (["data.shape=banana"], "data.shape='banana' is not one of gmm, moons, rings, spiral"),
    (["model=deep_gmm", "objective=mdn", "data=regression", "backbone=conv"], "backbone=conv expects 28x28 images"),
    (["data=array", "data.path=/nonexistent/x.npz"], "/nonexistent/x.npz"),
])
def test_bad_override_fails_with_one_line(args, expected, tmp_path):
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    result = run_cli([*overrides, "debug=fast", f"paths.log_dir={tmp_path}", *flags])
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("dgmm_lab: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")), "nothing may be trained or saved"
