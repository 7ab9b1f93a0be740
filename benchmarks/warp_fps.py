#!/usr/bin/env python
"""Frames per second of the warp avatar, end to end, on the CPU (``--size``: its frame's long side).

It times `trtalk render --model warp` (the one pipeline, `trtalk.runtime.render.Renderer` with
`WarpFamily`) from files: decoding and aligning the pose video (mediapipe face mesh), the
streaming mel and mouth follower, the rigid pose fit, deforming the mesh and rasterising the
backward warp field and mouth masks, the warp network (torch or ONNX Runtime) and H.264/AAC
encoding. ``--encode`` is accepted for the old command line; encoding is always in.

Prints a table and writes JSON with the machine, library versions and the
exact command to ``benchmarks/results/warp_fps_cpu.json`` (``--out``).

The avatar is the whole 512x512 photo at ``--size`` (default 512: the photo's own size); the
pose video is 256x256 (what the tracker reads).

    python benchmarks/warp_fps.py [--size 512] [--repeats 3] [--backends torch onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.audio import load_audio, num_video_frames  # noqa: E402
from trtalk.face import read_image  # noqa: E402
from trtalk.media.mp4 import Mp4Sink  # noqa: E402
from trtalk.runtime.render import DEFAULT_AUDIO, DEFAULT_FACE  # noqa: E402


def make_pose_video(path: Path, photo: np.ndarray, n: int, fps: float = 25.0, size: int = 256) -> None:
    """The photo rotating +-8 degrees in-plane about the face, like the test fixture."""
    h, w = photo.shape[:2]
    cx, cy, crop = 0.44 * w, 0.23 * h, 0.44 * min(h, w)
    with Mp4Sink(path, fps=fps) as sink:
        for i in range(n):
            m = cv2.getRotationMatrix2D((cx, cy), 8.0 * np.sin(np.pi * i / fps), size / crop)
            m[0, 2] += size / 2 - cx
            m[1, 2] += size / 2 - cy
            sink.write(cv2.warpAffine(photo, m, (size, size), borderMode=cv2.BORDER_REFLECT101))


def run_once(face: Path, audio: Path, pose: Path, backend: str, out: Path, size: int) -> dict:
    from trtalk.runtime.family import WarpFamily
    from trtalk.runtime.render import RenderConfig, render

    cpu0 = time.process_time()
    result = render(RenderConfig(output=out, face=face, audio=audio, pose=pose, size=size),
                    WarpFamily(fps=25.0, backend=backend, size=size))
    cpu = time.process_time() - cpu0
    # CPU seconds of this process (all its threads): on a machine shared with other jobs the wall
    # clock counts their time too; frames per CPU second does not.
    return {"frames": result.frames, "seconds": result.seconds, "fps": result.fps, "cpu_s": cpu,
            "fps_per_cpu_s": result.frames / cpu if cpu > 0 else float("inf")}


def machine_info() -> dict:
    import mediapipe
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__, "mediapipe": mediapipe.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="the output frame's long side (the photo is 512)")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--encode", action="store_true", help="(always on) H.264/AAC encoding is timed")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/warp_fps_cpu.json, _SIZE before .json "
                         "for another size than 512)")
    args = ap.parse_args()
    if args.out is None:
        suffix = "" if args.size == 512 else f"_{args.size}"
        args.out = ROOT / "benchmarks" / "results" / f"warp_fps_cpu{suffix}.json"
    import torch

    torch.set_num_threads(1)  # as `trtalk demo` does (see trtalk/runtime/render_cli.py)

    photo = read_image(DEFAULT_FACE)
    wave = load_audio(DEFAULT_AUDIO)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pose = Path(tmp) / "pose.mp4"
        make_pose_video(pose, photo, num_video_frames(len(wave), 25.0))
        for backend in args.backends:
            run_once(DEFAULT_FACE, DEFAULT_AUDIO, pose, backend, Path(tmp) / "warm.mp4", args.size)  # warm-up
            runs = [run_once(DEFAULT_FACE, DEFAULT_AUDIO, pose, backend, Path(tmp) / "out.mp4", args.size)
                    for _ in range(args.repeats)]
            best = sorted(runs, key=lambda r: r["fps"])[len(runs) // 2]  # the median run
            results[backend] = {"median": best, "fps_all": [round(r["fps"], 1) for r in runs]}
            results[backend]["fps_per_cpu_s_all"] = [round(r["fps_per_cpu_s"], 1) for r in runs]
            results[backend]["load_average"] = os.getloadavg()
            print(f"{backend:12s} {best['fps']:6.1f} fps (median of {args.repeats}; runs {results[backend]['fps_all']}); "
                  f"frames per CPU second {results[backend]['fps_per_cpu_s_all']}; load {os.getloadavg()[0]:.1f}")
    report = {
        "benchmark": f"trtalk render --model warp --size {args.size}: pose alignment + audio features + warp "
                     f"+ encoding",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "machine": machine_info(),
        "inputs": {"face": str(DEFAULT_FACE.relative_to(ROOT)), "audio": str(DEFAULT_AUDIO.relative_to(ROOT)),
                   "pose": "synthetic 256x256 rotating astronaut, 25 fps", "size": args.size,
                   "output": f"{args.size}x{args.size} (the 512x512 photo's frame at --size)"},
        "note": "measured on a 2-core machine shared with other jobs; see the median and all runs",
        "results": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
