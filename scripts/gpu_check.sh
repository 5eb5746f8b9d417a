#!/usr/bin/env bash
# The GPU checks, prepared for a task that is lent a GPU machine for a few minutes.
#
#   bash scripts/gpu_check.sh bundle   # here: packs what the GPU machine lacks into .gpu/
#   bash scripts/gpu_check.sh run      # there (carry .gpu): GPU tests, EM and VaDE timings
#
# The GPU machine has torch, Lightning, scikit-learn and TensorBoard but no Hydra and no
# network, so `bundle` copies the installed pure-Python hydra, omegaconf and antlr4 packages
# from .venv and the MNIST files from $DGMM_LAB_DATA_DIR into .gpu/ (gitignored, 14 MB).
# `run` writes its logs and tables to $OUT (the device tool's output folder) or gpu_check/.
# Stages and sizes: STAGES="tests em deep", EM_CASES, DEEP_EPOCHS, DEEP_PRETRAIN, DEEP_SEEDS (0,1,2),
# DEEP_OVERRIDES (default trainer=gpu).
set -uo pipefail
cd "$(dirname "$0")/.."

bundle() {
  set -e
  : "${DGMM_LAB_DATA_DIR:?set DGMM_LAB_DATA_DIR to the folder holding MNIST/raw}"
  rm -rf .gpu && mkdir -p .gpu/site .gpu/data/MNIST/raw
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for package in hydra omegaconf antlr4; do cp -r "$site/$package" .gpu/site/; done
  mkdir -p .gpu/site/hydra_plugins  # launcher=joblib only: the other plugins need packages it lacks
  cp -r "$site/hydra_plugins/hydra_joblib_launcher" .gpu/site/hydra_plugins/
  find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
  cp "$DGMM_LAB_DATA_DIR"/MNIST/raw/*.gz .gpu/data/MNIST/raw/
  du -sh .gpu
}

run() {
  out=${OUT:-gpu_check}
  mkdir -p "$out"
  python=${PYTHON:-python3}
  export PYTHONPATH="$PWD/src:$PWD/.gpu/site" PYTHONUNBUFFERED=1
  export DGMM_LAB_DATA_DIR="$PWD/.gpu/data" DGMM_LAB_CACHE_DIR=/tmp/dgmm_lab_cache
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  "$python" -c "import torch, pytorch_lightning, hydra; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), 'lightning', pytorch_lightning.__version__, 'hydra', hydra.__version__)" \
    2>&1 | tee "$out/versions.txt"
  status=0
  for stage in ${STAGES:-tests em deep}; do
    start=$(date +%s)
    case $stage in
      tests)  # the GPU tests, and the EM/density tests on this machine's package versions
        "$python" -m pytest -m "" -p no:cacheprovider -q -rs tests/test_gpu.py tests/test_em.py \
          tests/test_density.py 2>&1 | tee "$out/pytest.txt" ;;
      em)  # ours on the GPU against scikit-learn on the machine's cores
        "$python" scripts/bench_em.py --device cuda --iters 10 --repeats 1 --threads "$(nproc)" \
          --cases ${EM_CASES:-mnist-pca50-full mnist-784-diag synthetic-full} 2>&1 | tee "$out/bench_em.md" ;;
      deep)  # VaDE over seeds as a sweep, all jobs at once on the one GPU, then its report
        seeds=${DEEP_SEEDS:-0,1,2}
        "$python" -m dgmm_lab.train experiment=vade_mnist "seed=$seeds" launcher=joblib \
          "hydra.launcher.n_jobs=$(tr , ' ' <<<"$seeds" | wc -w)" num_threads=2 "trainer.max_epochs=${DEEP_EPOCHS:-100}" \
          "objective.pretrain_epochs=${DEEP_PRETRAIN:-50}" ${DEEP_OVERRIDES:-trainer=gpu} \
          "hydra.sweep.dir=$out/vade_sweep" -m >"$out/vade_sweep.log" 2>&1 \
          && "$python" -m dgmm_lab.report "$out/vade_sweep" 2>&1 | tee "$out/vade_report.md" ;;
      *) echo "unknown stage $stage (tests, em, deep)"; exit 2 ;;
    esac
    code=$?
    echo "stage $stage: exit $code, $(( $(date +%s) - start )) s" | tee -a "$out/stages.txt"
    [ "$code" = 0 ] || status=$code
  done
  return "$status"
}

case ${1:-} in
  bundle) bundle ;;
  run) run ;;
  *) echo "usage: bash scripts/gpu_check.sh bundle|run"; exit 2 ;;
esac
