#!/usr/bin/env bash
# Install trtalk without any extra into a fresh virtual environment and run `trtalk --help` and
# `trtalk demo` there: optional packages (onnx, onnxruntime, TensorRT, sounddevice, ...) must stay
# optional. About a minute with pip's cache warm (CI: after scripts/install.sh). Kernels are not
# built (TRTALK_BUILD_KERNELS=0): the reference path is what a bare install runs anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BARE="$(mktemp -d -t trtalk-bare-XXXXXX)"
trap 'rm -rf "$BARE"' EXIT
"$PY" -m venv "$BARE/venv"
"$BARE/venv/bin/python" -m pip install -q --upgrade pip
"$BARE/venv/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
TRTALK_BUILD_KERNELS=0 "$BARE/venv/bin/python" -m pip install -q -e .
if "$BARE/venv/bin/python" -c "import onnx" 2>/dev/null; then
  echo "bare install: onnx is installed, so this checks nothing" >&2
  exit 1
fi
(cd "$BARE" && ./venv/bin/trtalk --help >/dev/null)
(cd "$BARE" && OMP_NUM_THREADS=1 ./venv/bin/trtalk -q demo -o "$BARE/out/demo.mp4")
test -s "$BARE/out/demo.mp4"
echo "bare install: trtalk --help and trtalk demo work without extras"
