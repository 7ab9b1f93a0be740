#!/usr/bin/env bash
# Stream throughput with and without a CPU hog beside it (issue 12, item 8).
#
#   bash benchmarks/contention.sh [OUT_DIR]
#
# Runs the real-time small-model stream (random weights, null sink, 20 s of the shipped speech
# tiled; long enough that the first frames' warm-up does not dominate) twice per setting: alone,
# and next to one busy-loop process per usable core. Settings: this tree ("policy": the thread policy of trtalk/threads.py), and with
# BEFORE=<commit> also that commit's trtalk ("before"; e.g. BEFORE=a16a22a, the last commit without
# the policy), extracted with git archive into a temporary folder and run with PYTHONPATH. Prints
# one line per run; the stats JSON files stay in OUT_DIR. Frames/s are only comparable within one
# run of this script on one machine (other load on it counts too).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
NCPU=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")
HOGS=()
start_hogs() { for _ in $(seq "$NCPU"); do "$PY" -c "while True: pass" & HOGS+=($!); done; }
stop_hogs() { for p in "${HOGS[@]}"; do kill "$p" 2>/dev/null || true; done; HOGS=(); }
trap stop_hogs EXIT

"$PY" - "$OUT/speech20.wav" <<'EOF'
import sys, wave
import numpy as np
from trtalk.audio import load_audio
x = np.tile(load_audio("trtalk/assets/demo_speech.wav"), 5)[:20 * 16000]
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
EOF
BEFORE_TREE=""
if [ -n "${BEFORE:-}" ]; then
  BEFORE_TREE=$(mktemp -d)
  git archive "$BEFORE" trtalk | tar -x -C "$BEFORE_TREE"
fi

run() {  # name, env...
  local name=$1; shift
  env "$@" "$PY" -m trtalk.cli -q stream --audio "$OUT/speech20.wav" --pose-static \
    --model pcavs --model-config small --realtime --sink null --duration 20 \
    --stats-json "$OUT/$name.json" >/dev/null 2>&1
  "$PY" - "$OUT/$name.json" "$name" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<28} {d['fps_achieved']:6.2f} fps  compute {d['compute_ms_per_frame']:7.1f} ms/frame  "
      f"frames {d['frames']:4d}  late {d['frames_dropped']}")
EOF
}

for rep in 1 2; do
  for load in idle hogs; do
    [ "$load" = hogs ] && start_hogs
    run "policy-$load-$rep" PYTHONPATH="$PWD"
    [ -n "$BEFORE_TREE" ] && run "before-$load-$rep" PYTHONPATH="$BEFORE_TREE"
    stop_hogs
  done
done
echo "stats in $OUT ($NCPU usable cores, $NCPU busy-loop processes in the -hogs runs)"
