"""Start-up: the commands that only read files or print help load neither torch nor
Lightning (seconds of imports before a one-line answer)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["dgmm_lab.report", "--help"], ["dgmm_lab.train", "--help"],
                                     ["dgmm_lab.predict", "--help"], ["dgmm_lab.evaluate", "--help"],
                                     ["dgmm_lab.sample", "--help"]])
def test_help_and_reports_import_neither_torch_nor_lightning(command):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", *command], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "dgmm_lab" in imported  # the import log is read
    assert not imported & {"torch", "pytorch_lightning", "lightning_fabric"}, command
