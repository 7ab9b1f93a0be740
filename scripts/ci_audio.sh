#!/usr/bin/env bash
# CI: a PulseAudio server with a null sink as the default microphone, for tests/test_mic_real.py.
# Best effort by design: any step that fails is reported and the script still exits 0; the test
# then skips and says why (no server, no PortAudio, ...). Needs root or passwordless sudo for apt.
#   bash scripts/ci_audio.sh
set -uo pipefail
say() { echo "ci_audio: $*"; }
SUDO=""
[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO="sudo -n"; }
if ! command -v pulseaudio >/dev/null || ! command -v pacat >/dev/null || ! ldconfig -p | grep -q libportaudio.so.2; then
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    timeout 600 $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends \
      pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins >/dev/null 2>&1 \
      || say "apt-get install pulseaudio pulseaudio-utils libportaudio2 failed"
  else
    say "no apt-get or no root: cannot install PulseAudio; the real-microphone test will skip"
  fi
fi
command -v pulseaudio >/dev/null || { say "pulseaudio missing; the real-microphone test will skip"; exit 0; }
if ! pactl info >/dev/null 2>&1; then
  pulseaudio -D --exit-idle-time=-1 --system=false >/dev/null 2>&1 || say "pulseaudio -D failed"
  for _ in 1 2 3 4 5 6 7 8 9 10; do pactl info >/dev/null 2>&1 && break; sleep 0.5; done
fi
if pactl info >/dev/null 2>&1; then
  pactl list short sinks | grep -q trtalk_ci || pactl load-module module-null-sink sink_name=trtalk_ci \
    sink_properties=device.description=trtalk_ci >/dev/null
  pactl set-default-sink trtalk_ci && pactl set-default-source trtalk_ci.monitor
  say "PulseAudio up: $(pactl info | grep -E 'Default Source')"
else
  say "no PulseAudio server; the real-microphone test will skip"
fi
exit 0
