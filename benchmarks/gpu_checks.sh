#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run on a GPU machine without network:
# the gpu-marked tests (kernels bit-exact vs their CPU twins, the IntModel on cuda equal
# to cpu), the kernel benchmark (GEMM and convolution vs cuBLASLt / cuDNN), and the GPU
# QAT benchmark with one training-loop trial on cuda, and the kernels report's GPU table.
# Logs and JSON go to $OUT.
#
#   make gpu-data      # here, once: copies Fashion-MNIST into .gpu-data (ignored by git)
#   then, on the GPU machine, with .gpu-data copied beside the tree:
#   OUT=results bash benchmarks/gpu_checks.sh      # about 9 minutes
#
# The GPU machine needs torch, CuPy, pytest and hypothesis; nothing is installed there.
# Each step has its own time limit so that one hang cannot eat the whole run.
set -uo pipefail
OUT=${OUT:-/tmp/qatlab-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/lib:$PWD" PYTHONUNBUFFERED=1
if [ -d .gpu-data/fashion-mnist ]; then export QATLAB_DATA="$PWD/.gpu-data/fashion-mnist"; fi
export QATLAB_CACHE="${TMPDIR:-/tmp}/qatlab-gpu-cache"
PY=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS CMD...: run, log to $OUT/NAME.log, remember a failure
    local name=$1 secs=$2; shift 2
    echo "== $name (limit ${secs}s): $*"
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
nvidia-smi -L | tee "$OUT/gpu.txt"
step pytest-gpu 170 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kernels
step kernels 230 "$PY" benchmarks/kernels.py --json "$OUT/kernels.json"
step qat-gpu 120 "$PY" benchmarks/qat_gpu.py --trial --json "$OUT/qat_gpu.json"
# The kernels report's GPU table (the page a GPU run renders), without the notebook machinery.
step kernels-page 60 "$PY" -c "from workbook.studies.kernels import gpu_table; print(gpu_table((256, 1024), 5).to_string())"
exit $status
