#!/usr/bin/env bash
# Regenerate trtalk/assets/demo_speech.wav: ~4 s of synthetic English speech for `trtalk demo`.
#
# Needs espeak-ng (apt-get install espeak-ng) and sox. The result is 16 kHz, 16-bit, mono PCM
# (about 130 KB). The sentence has commas so the demo shows the mouth closing in pauses.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/../trtalk/assets/demo_speech.wav}"
text="Hello there! I am a talking face, no downloads needed."

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "make_demo_speech.sh: $tool not found; install it (apt-get install $tool)" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# -s: words per minute; -g: extra gap between words (10 ms units) so lips close between words.
espeak-ng -v en-us -s 160 -g 3 -w "$tmp/raw.wav" "$text"
# Resample to 16 kHz mono 16-bit, normalise to -3 dBFS, cap the length at 5 s. -D: no dither,
# so the file is byte-for-byte reproducible (dither is random).
sox -V1 -D "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/out.wav" norm -3 trim 0 5
mv "$tmp/out.wav" "$out"
echo "wrote $out ($(soxi -D "$out") s)"
