#!/usr/bin/env bash
# One-shot GPU check: on a bare machine with an NVIDIA GPU, its own torch and no network, run every
# GPU test, the kernel benchmark and `trtalk bench`, and write one results folder.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: $OUT when set, else benchmarks/results/gpu-check)
#
# trtalk is used from this checkout (PYTHONPATH), not installed: the machine's torch stays as it
# is. Missing pure-Python or binary packages travel as wheels in ./.whl (see README "GPU check");
# they are installed into /tmp/site first. mediapipe is not needed (it cannot run there: numpy 2);
# PyAV only for the media tests (they skip without it). Budget: under 8 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/gpu-check}}"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
say() { echo "== $*" | tee -a "$log"; }
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
say "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0), 'cc', torch.cuda.get_device_capability(0))"; python3 -c "import triton; print('triton', triton.__version__)" 2>&1; } | tee -a "$log"
status=0
say "GPU tests (pytest -m gpu)"
timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$out/gpu_tests.xml" 2>&1 | tail -40 | tee -a "$log" || status=1
say "kernel benchmark"
timeout 120 python3 benchmarks/kernels.py --out "$out" 2>&1 | tail -60 | tee -a "$log" || status=1
say "trtalk bench"
timeout 300 python3 -m trtalk.cli bench --device cuda --batch 1,8,64 --precision fp16 --warmup 5 --iters 30 \
  --backends torch-ref,torch,torch-fp16,torch-cudagraph,torch-compile,triton,aot --out "$out/bench" 2>&1 \
  | tail -60 | tee -a "$log" || status=1
say "done in $(( $(date +%s) - start )) s, status $status"
exit $status
