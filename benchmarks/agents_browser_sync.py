#!/usr/bin/env python
"""The Pipecat example bot's audio/video offset as a viewer of the page meets it, over repeated runs.

Each run is one session of tests/test_agents_browser.py (Debian's Chromium, the example bot over
Pipecat's SmallWebRTCTransport, the sound recorded as PulseAudio played it, the displayed mouth
matched against the service's frames; see that file): a fresh browser and bot, three utterances,
the second measured. Per run it keeps what the test printed: the offset (how far the picture is
behind the sound; ITU-R BT.1359: at most 45 ms behind, 125 ms ahead), where the page's WebAudio
tap puts the sound against the audio server, Chromium's jitter buffers, the other processes' CPU
meanwhile, and whether the test passed. Needs the agents requirements, Chromium and a PulseAudio
server (scripts/ci_audio.sh starts one); run it on an idle machine:

    python benchmarks/agents_browser_sync.py --runs 8

Writes JSON with the machine, the exact command and every run to
``benchmarks/results/agents_browser_sync.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.fsutil import atomic_output  # noqa: E402

TEST = "tests/test_agents_browser.py::test_pipecat_bot_in_chromium_lips_in_sync"
PATTERNS = {
    "picture_behind_sound_ms": r"browser: picture ([+-]?\d+) ms behind the sound",
    "tap_vs_heard_ms": r"the page's WebAudio tap puts the sound ([+-]?\d+) ms from where",
    "audio_jitter_buffer_ms": r"jitter buffers held the audio (\d+) ms",
    "video_jitter_buffer_ms": r"and the video (\d+) ms on average",
    "other_processes_cores": r"other processes used ([\d.]+) cores",
    "played_ms": r"ms sent, (\d+) ms on the page",
}


def one_run() -> dict:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    row: dict = {"wall_s": round(time.monotonic() - t0, 1), "rc": out.returncode,
                 "outcome": (re.findall(r"^(?:\d+ \w+(?:, )?)+.*in [\d.]+s", text, re.M) or ["?"])[-1]}
    for key, pat in PATTERNS.items():
        m = re.search(pat, text)
        row[key] = float(m.group(1)) if m else None
    if row["picture_behind_sound_ms"] is None:
        row["tail"] = text[-2000:]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agents_browser_sync.json")
    args = ap.parse_args(argv)
    rows = []
    for i in range(args.runs):
        row = one_run()
        rows.append(row)
        print(f"run {i + 1}/{args.runs}: picture {row['picture_behind_sound_ms']} ms behind the sound "
              f"({row['outcome']})", flush=True)
    got = sorted(r["picture_behind_sound_ms"] for r in rows if r["picture_behind_sound_ms"] is not None)
    summary = {"runs": len(rows), "measured": len(got), "passed": sum(r["rc"] == 0 for r in rows)}
    if got:
        summary.update(min=got[0], median=got[len(got) // 2], max=got[-1])
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_avg": os.getloadavg()},
              "bounds_ms": {"picture_behind_at_most": 45, "picture_ahead_at_most": 125},
              "picture_behind_sound_ms": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0 if got and summary["passed"] == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
