#!/usr/bin/env python
"""Voice-agent faces (trtalk.integrations): N agents in one process on one shared scheduler.

For each number of agents it runs N `AgentFace`s (what the Pipecat service and the LiveKit
generator run) for ``--seconds`` with the demo speech pushed as TTS audio in 20 ms chunks, an
utterance every ``--every`` seconds, and reports:

- first speech frame: from pushing an utterance's first chunk to the first frame carrying its audio
  (lips and sound leave together; the lookahead is 120 ms at 25 fps), median over utterances;
- A/V offset at the output: each frame carries its own slot's audio, so the pairing offset is 0 by
  construction; what is measured is the lip lag, the frame lag at which the mouth (the mouth box
  of the warp avatar against the offline mouth of the same audio) correlates best, in ms (warp only);
- frames/s per agent (frames made, held frames excluded) and the share of frame slots that got a
  frame (the rest were dropped late, their audio went out with the next frame);
- CPU per agent-frame: process CPU seconds / frames made, and CPU per agent (cores);
- the scheduler's batch histogram;
- "holds 25 frames/s": every agent makes at least 95 % of its frame slots.

The answer "how many agents hold 25 frames/s on this machine" is the largest N that holds. Run it on
an idle machine (wall-clock rates are meaningless on a loaded one; CPU per frame is the robust
number):

    python benchmarks/agents.py --model warp --agents 1 2 4 6 8 --seconds 12
    python benchmarks/agents.py --model pcavs --model-config small --agents 1 2 4 --seconds 12

Writes JSON with the machine, versions and the exact command to
``benchmarks/results/agents_<model>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.audio.decode import load_audio  # noqa: E402
from trtalk.fsutil import atomic_output  # noqa: E402
from trtalk.integrations import shared  # noqa: E402
from trtalk.integrations.face import AgentFace, FaceOutput  # noqa: E402

PHOTO = ROOT / "trtalk" / "assets" / "astronaut.png"
SPEECH = ROOT / "trtalk" / "assets" / "demo_speech.wav"
RATE = 24000


class Agent:
    """One face, its outputs and the times its utterances were pushed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.outs: list[tuple[float, FaceOutput]] = []
        controls = {"model_config": args.model_config} if args.model_config else {}
        self.face = AgentFace(PHOTO, args.model, fps=args.fps, pose=args.pose, sample_rate=RATE, size=args.size,
                              on_output=lambda o: self.outs.append((time.monotonic(), o)), **controls)
        self.pushed: list[tuple[float, int]] = []  # (time, out count then)

    def first_speech_frame_ms(self) -> list[float]:
        res = []
        for t, _ in self.pushed:
            later = [ts for ts, o in self.outs if ts >= t and o.speech]
            if later:
                res.append(1000 * (later[0] - t))
        return res


def speak(agents: list[Agent], pcm: np.ndarray, every_s: float, stop: threading.Event) -> None:
    """Push the speech to every agent in 20 ms chunks at real time, an utterance every ``every_s``."""
    step = RATE // 50
    while not stop.is_set():
        t0 = time.monotonic()
        for a in agents:
            a.pushed.append((t0, len(a.outs)))
        for i in range(0, len(pcm), step):
            for a in agents:
                a.face.push_audio(pcm[i:i + step], RATE)
            if stop.wait(max(0.0, t0 + (i + step) / RATE - time.monotonic())):
                return
        for a in agents:
            a.face.flush()
        stop.wait(max(0.0, t0 + every_s - time.monotonic()))


def lip_lag_ms(agent: Agent, fps: float) -> float | None:
    """The frame lag (ms) at which the warp avatar's mouth best matches the offline mouth of the
    audio it sent out (positive: lips after sound)."""
    fam = agent.face.shared.family if agent.face.shared else None
    avatars = list(agent.face.shared.avatars.values()) if agent.face.shared else []
    if fam is None or not avatars or "renderer" not in avatars[0].state:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    from test_agents import _corr, _expected_mouth, _mouth_box, _mouth_luma

    outs = [o for _, o in agent.outs if not o.held]
    audio = np.concatenate([o.audio for _, o in agent.outs])
    renderer = avatars[0].state["renderer"]
    box = _mouth_box(renderer)
    slots = np.array([o.slot for o in outs])
    mouth = np.array([_mouth_luma(o.image, box) for o in outs])
    ref = _expected_mouth(renderer, audio, int(slots.max()) + 8, box)
    lags = list(range(-4, 5))
    corr = [_corr(mouth, ref[np.clip(slots - lag, 0, len(ref) - 1)]) for lag in lags]
    return 1000.0 * lags[int(np.argmax(corr))] / fps


def run(n: int, args: argparse.Namespace, pcm: np.ndarray) -> dict:
    agents = [Agent(args) for _ in range(n)]
    for a in agents:
        a.face.start()
    sched = agents[0].face.shared.scheduler
    time.sleep(1.0)  # warm-up: the faces run idle
    cpu0, t0 = time.process_time(), time.monotonic()
    count0 = [len(a.outs) for a in agents]
    slot0 = [a.outs[-1][1].slot if a.outs else 0 for a in agents]
    hist0 = dict(sched.stats.batch_sizes)
    stop = threading.Event()
    th = threading.Thread(target=speak, args=(agents, pcm, args.every, stop), daemon=True)
    th.start()
    time.sleep(args.seconds)
    stop.set()
    th.join()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    hist = {b: c - hist0.get(b, 0) for b, c in sched.stats.batch_sizes.items() if c - hist0.get(b, 0)}
    per = []
    for a, c0, s0 in zip(agents, count0, slot0):
        outs = [o for _, o in a.outs[c0:]]
        made = sum(not o.held for o in outs)
        slots = (outs[-1].slot - s0) if outs else 0
        per.append({"frames": made, "fps": made / wall, "slot_share": made / max(1, slots),
                    "first_speech_frame_ms": a.first_speech_frame_ms()})
    lip = lip_lag_ms(agents[0], args.fps) if args.pose == "still" else None
    for a in agents:
        a.face.close()
    frames = sum(p["frames"] for p in per)
    firsts = [x for p in per for x in p["first_speech_frame_ms"]]
    return {"agents": n, "seconds": round(wall, 2), "fps_per_agent": [round(p["fps"], 2) for p in per],
            "slot_share": [round(p["slot_share"], 3) for p in per],
            "first_speech_frame_ms_p50": round(float(np.median(firsts)), 1) if firsts else None,
            "first_speech_frame_ms_max": round(float(np.max(firsts)), 1) if firsts else None,
            "lip_lag_ms": lip, "cpu_s": round(cpu, 2), "cpu_ms_per_agent_frame": round(1000 * cpu / max(1, frames), 2),
            "cpu_cores_per_agent": round(cpu / wall / n, 3), "batch_histogram": hist,
            "holds_fps": all(p["slot_share"] >= 0.95 for p in per)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="warp")
    ap.add_argument("--model-config", default=None, help="small: PC-AVS's narrow test generator (random weights)")
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--every", type=float, default=6.0, help="seconds between utterances")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pose", default="still", choices=["still", "auto"], help="still: the lip lag is measured too")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pcm = np.clip(np.round(load_audio(SPEECH, RATE) * 32768), -32768, 32767).astype(np.int16)
    rows = []
    for n in args.agents:
        row = run(n, args, pcm)
        rows.append(row)
        print(f"{n:3d} agents: fps/agent {min(row['fps_per_agent']):5.1f}-{max(row['fps_per_agent']):5.1f}  "
              f"slots made {min(row['slot_share']):.2f}  first speech frame p50 {row['first_speech_frame_ms_p50']} ms  "
              f"lip lag {row['lip_lag_ms']} ms  CPU {row['cpu_ms_per_agent_frame']} ms/agent-frame "
              f"({row['cpu_cores_per_agent']} cores/agent)  batches {row['batch_histogram']}  "
              f"{'holds' if row['holds_fps'] else 'does not hold'} {args.fps:g} fps", flush=True)
        assert not shared.active()
    held = [r["agents"] for r in rows if r["holds_fps"]]
    import torch

    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "load_avg": os.getloadavg()},
              "model": args.model, "model_config": args.model_config, "size": args.size, "fps": args.fps,
              "rows": rows, "most_agents_holding_fps": max(held) if held else 0}
    out = args.out or ROOT / "benchmarks" / "results" / f"agents_{args.model}{'_' + args.model_config if args.model_config else ''}.json"
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"most agents holding {args.fps:g} frames/s: {result['most_agents_holding_fps']}; wrote {out}")


if __name__ == "__main__":
    main()
