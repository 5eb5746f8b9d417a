#!/usr/bin/env bash
# Create .venv (once) and install dgmm_lab with its test, Slurm and Optuna extras into it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import dgmm_lab, pytest, xdist, submitit, optuna" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev,slurm,optuna]'
  touch .venv/.installed
fi
