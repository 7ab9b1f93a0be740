#!/usr/bin/env bash
# Set up trtalk in ./.venv on a fresh machine: PyTorch first (so pip does not pull the multi-GB
# CUDA build where a CPU build is wanted), then the package with its test, export, serve and stream
# extras (stream: sounddevice for `trtalk stream --mic`, pyvirtualcam for `--virtual-cam`).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# trt-rtx: TensorRT for RTX builds engines ahead of time even on a CPU-only machine (~100 MB).
.venv/bin/python -m pip install -q -e ".[test,export,trt-rtx,serve,stream]"
# The voice-agent integrations (tests/test_agents.py runs them): a second pip call, pinned in
# requirements-agents.txt, which says why it cannot be an extra (protobuf: pip reports
# mediapipe's pin, expected). About 2 minutes on 2 shared cores.
.venv/bin/python -m pip install -q -r requirements-agents.txt
# What pip cannot install: the system libraries behind the microphone and the virtual camera.
if ! .venv/bin/python -c "import sounddevice" 2>/dev/null; then
    echo "note: --mic needs PortAudio: sudo apt-get install libportaudio2 (macOS: brew install portaudio)"
fi
if [ "$(uname)" = Linux ] && ! ls /dev/video* >/dev/null 2>&1; then
    echo "note: --virtual-cam needs a v4l2loopback device: sudo apt-get install v4l2loopback-dkms &&" \
         "sudo modprobe v4l2loopback exclusive_caps=1"
fi
echo "trtalk installed in $(pwd)/.venv"
