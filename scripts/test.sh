#!/usr/bin/env bash
# The whole test suite, slow, ddp, slurm and browser tests included (CI runs exactly this).
# Real-MNIST tests need DGMM_LAB_DATA_DIR (a folder holding MNIST/raw/*.gz);
# Slurm tests need a cluster: bash scripts/slurm_cluster.sh start (sets nothing globally).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "" --durations=25 "$@"
