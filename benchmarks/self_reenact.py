#!/usr/bin/env python
"""Self-reenactment: the warp avatar against real talking clips, frame by frame.

For each clip: photo = its first frame, speech = its own audio, pose = the clip itself, rendered
with the built-in warp avatar exactly as a user would (``trtalk render --model warp --face
frame0.png --audio clip.mp4 --pose clip.mp4 --paste-back``), so the output lands on the clip's
frame grid; then compared with the real frames:

- SSIM of the whole frame (grey level, 11x11 Gaussian window, sigma 1.5, as Wang et al. 2004);
- SSIM of the mouth box: a square around the REAL frame's lips (centre of the lip points, side
  1.8x the mouth width), the same box cut from the output;
- mouth-opening correlation: Pearson r of the output's inner-lip gap against the real one, the gap
  being mediapipe face mesh points 13-14 over points 10-152 (face height), both tracked over the
  frames in order;
- closed-lip agreement: of the real frames with closed lips (gap under 1.5 % of the face height),
  the share where the output's lips are closed too.

The same four for the still photo (the first frame repeated) are the baseline (its gap never moves,
so its correlation is undefined). Results: a markdown table (mean and range over clips, per-clip
rows), JSON and a strip of frames (real over output) in ``--out``.

The clips are the PC-AVS sample clips (``misc/Input``, ``misc/Pose_Source``, ``misc/Audio_Source``
zips of github.com/Hangz-nju-cuhk/Talking-Face_PC-AVS: VoxCeleb, 224x224, 25 fps, own audio),
read from a folder (every .mp4 under ``--clips``; they are not committed):

    python benchmarks/self_reenact.py --clips /tmp/pcavs --out benchmarks/results/self_reenact
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FPS = 25.0
CLOSED = 0.015  # inner-lip gap over face height under which the lips count as closed
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
BOX_SCALE = 1.8  # mouth box side in mouth widths (61-291)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two RGB uint8 images on their grey level (Gaussian 11x11, sigma 1.5, L = 255)."""
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def track(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """Face mesh (468x2 pixels) per frame, tracked in order; None where no face was found."""
    from trtalk.face import FaceMeshDetector

    out: list[np.ndarray | None] = []
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        for f in frames:
            faces = det.detect(f)
            out.append(np.asarray(faces[0], np.float64)[:, :2] if faces else None)
    return out


def lip_gap(mesh: np.ndarray | None) -> float:
    """Inner-lip gap over face height (points 13-14 over 10-152); NaN without a mesh."""
    if mesh is None:
        return float("nan")
    h = float(np.linalg.norm(mesh[10] - mesh[152]))
    return float(np.linalg.norm(mesh[13] - mesh[14])) / max(h, 1e-6)


def mouth_box(mesh: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the square mouth box of a mesh, clipped to the frame."""
    lips = mesh[list(LIPS)]
    c = lips.mean(axis=0)
    half = BOX_SCALE * float(np.linalg.norm(mesh[61] - mesh[291])) / 2
    h, w = shape[:2]
    x0, y0 = int(max(0, round(c[0] - half))), int(max(0, round(c[1] - half)))
    x1, y1 = int(min(w, round(c[0] + half))), int(min(h, round(c[1] + half)))
    return x0, y0, x1, y1


def read_video(path: Path) -> list[np.ndarray]:
    from trtalk.face import open_media

    return [np.ascontiguousarray(f) for f in open_media(path)]


def render_clip(clip: Path, frame0: np.ndarray, work: Path, threads: int,
                mouth_model: Path | None = None) -> tuple[list[np.ndarray], str]:
    """The warp avatar's self-reenactment of ``clip`` through the CLI; (frames, command).
    ``mouth_model``: the audio-to-mouth model to use (``$TRTALK_MOUTH_MODEL``), e.g. one that was
    trained without this clip."""
    face = work / f"{clip.stem}_frame0.png"
    cv2.imwrite(str(face), cv2.cvtColor(frame0, cv2.COLOR_RGB2BGR))
    out = work / f"{clip.stem}_warp.mp4"
    cmd = [sys.executable, "-m", "trtalk.cli", "render", "--model", "warp", "--face", str(face),
           "--audio", str(clip), "--pose", str(clip), "--paste-back", "--threads", str(threads),
           "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if mouth_model is not None:
        if not mouth_model.is_file():
            raise SystemExit(f"no held-out mouth model {mouth_model}")
        env["TRTALK_MOUTH_MODEL"] = str(mouth_model)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return read_video(out), shlex.join(["trtalk"] + cmd[3:])


def measures(real: list[np.ndarray], real_mesh: list, out: list[np.ndarray], out_mesh: list) -> dict:
    """The four measures of one clip's output against its real frames (the first ``n`` of both)."""
    n = min(len(real), len(out))
    whole, box = [], []
    for i in range(n):
        if out[i].shape != real[i].shape:
            raise SystemExit(f"output frame {out[i].shape} does not match the clip's {real[i].shape}")
        whole.append(ssim(real[i], out[i]))
        if real_mesh[i] is not None:
            x0, y0, x1, y1 = mouth_box(real_mesh[i], real[i].shape)
            box.append(ssim(real[i][y0:y1, x0:x1], out[i][y0:y1, x0:x1]))
    g_real = np.array([lip_gap(m) for m in real_mesh[:n]])
    g_out = np.array([lip_gap(m) for m in out_mesh[:n]])
    ok = np.isfinite(g_real) & np.isfinite(g_out)
    r = None
    if ok.sum() > 10 and g_real[ok].std() > 1e-9 and g_out[ok].std() > 1e-9:
        r = float(np.corrcoef(g_real[ok], g_out[ok])[0, 1])
    closed = ok & (g_real < CLOSED)
    agree = float(np.mean(g_out[closed] < CLOSED)) if closed.any() else None
    return {"frames": n, "ssim": float(np.mean(whole)), "ssim_mouth": float(np.mean(box)) if box else None,
            "open_r": r, "closed_agree": agree, "real_closed_frames": int(closed.sum()),
            "out_closed_share": float(np.mean(g_out[ok] < CLOSED)) if ok.any() else None,
            "gap_real_mean": float(np.nanmean(g_real)), "gap_out_mean": float(np.nanmean(g_out)),
            "gap_real": [round(float(g), 4) for g in g_real], "gap_out": [round(float(g), 4) for g in g_out]}


def summary(rows: list[dict], key: str) -> dict | None:
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}


def fmt(s: dict | None) -> str:
    return "-" if s is None else f"{s['mean']:.3f} ({s['min']:.2f} to {s['max']:.2f})"


def strip(path: Path, samples: list[tuple[str, list[np.ndarray], list[np.ndarray]]], per_clip: int = 6,
          side: int = 160) -> None:
    """Rows of frames: for each sampled clip, the real frames over the output frames at the same times
    (frames scaled to ``side`` px high, so the PNG stays small enough to commit)."""
    rows = []

    def small(f: np.ndarray) -> np.ndarray:
        return cv2.resize(f, (round(f.shape[1] * side / f.shape[0]), side), interpolation=cv2.INTER_AREA)

    for _name, real, out in samples:
        n = min(len(real), len(out))
        idx = np.linspace(0, n - 1, per_clip).round().astype(int)
        rows.append(np.concatenate([small(real[i]) for i in idx], axis=1))
        rows.append(np.concatenate([small(out[i]) for i in idx], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    img = np.concatenate(rows[:-1], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, required=True, help="folder with the PC-AVS misc/ mp4 clips")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "self_reenact")
    ap.add_argument("--work", type=Path, default=None, help="folder for the rendered mp4s (default: a temp dir)")
    ap.add_argument("--only", nargs="*", default=None, help="clip names (stems) to run, default all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loo-models", type=Path, default=None,
                    help="folder of leave-one-clip-out mouth models (scripts/train_mouth_model.py "
                         "--loo-dir): each clip is rendered with the model trained without it")
    ap.add_argument("--strip-clips", type=int, default=3, help="clips shown in the strip PNG")
    ap.add_argument("--name", default="self_reenact", help="stem of the result files in --out")
    ap.add_argument("--label", default="", help="a note written into the results (e.g. the commit)")
    args = ap.parse_args(argv)

    clips = sorted(p for p in args.clips.rglob("*.mp4"))
    if args.only:
        clips = [c for c in clips if c.stem in set(args.only)]
    if not clips:
        raise SystemExit(f"no .mp4 under {args.clips}")
    tmp = tempfile.TemporaryDirectory(prefix="trtalk-reenact-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    rows, still_rows, samples, command = [], [], [], ""
    t0 = time.time()
    for clip in clips:
        real = read_video(clip)
        loo = args.loo_models / f"{clip.stem}.safetensors" if args.loo_models else None
        out, command = render_clip(clip, real[0], work, args.threads, loo)
        real_mesh, out_mesh = track(real), track(out)
        m = measures(real, real_mesh, out, out_mesh)
        still = [real[0]] * len(real)
        s = measures(real, real_mesh, still, [real_mesh[0]] * len(real))
        name = f"{clip.parent.name}/{clip.name}"
        rows.append({"clip": name, **m})
        still_rows.append({"clip": name, **s})
        if len(samples) < args.strip_clips:
            samples.append((name, real, out))
        print(f"{name}: {m['frames']} frames; SSIM {m['ssim']:.3f} (still {s['ssim']:.3f}), mouth "
              f"{m['ssim_mouth']:.3f} (still {s['ssim_mouth']:.3f}), open r {m['open_r']}, closed agree "
              f"{m['closed_agree']} ({m['real_closed_frames']} closed frames)", flush=True)

    keys = (("ssim", "SSIM, whole frame"), ("ssim_mouth", "SSIM, mouth box (from the real frame's landmarks)"),
            ("open_r", "mouth opening vs the real mouth opening, Pearson r"),
            ("closed_agree", "real frames with closed lips where the output's lips are closed too"))
    result = {
        "command": "python benchmarks/self_reenact.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "render_command": command,
        "label": args.label,
        "mouth_models": "leave-one-clip-out: " + str(args.loo_models) if args.loo_models else "shipped",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "seconds": round(time.time() - t0, 1),
        "closed_threshold": CLOSED,
        "warp": {k: summary(rows, k) for k, _ in keys},
        "still": {k: summary(still_rows, k) for k, _ in keys},
        "clips": rows,
        "still_clips": still_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    strip(args.out / f"{args.name}_strip.png", samples)
    md = ["# Self-reenactment: warp avatar vs the real clip", "",
          f"Command: `{result['command']}`" + (f" ({args.label})" if args.label else ""), "",
          f"Per clip: `{command}` (the clip's first frame as the photo"
          + ("; each clip rendered with the mouth model trained on the other clips, "
             "`TRTALK_MOUTH_MODEL=<loo-dir>/<clip>.safetensors`" if args.loo_models else "")
          + "). Machine: "
          f"{result['machine']['platform']}, {result['machine']['cpus']} CPUs, Python "
          f"{result['machine']['python']}.", "",
          "Landmarks: mediapipe face mesh; inner-lip gap = |p13 - p14| / |p10 - p152|, closed under "
          f"{CLOSED:.1%}. Mouth box: square around the real frame's lips, side {BOX_SCALE}x the mouth "
          "width. SSIM on the grey level (11x11 Gaussian, sigma 1.5).", "",
          f"| measure ({len(rows)} clips: mean (range)) | warp avatar | still photo |", "|---|---|---|"]
    for k, label in keys:
        md.append(f"| {label} | {fmt(result['warp'][k])} | {fmt(result['still'][k])} |")
    md += ["", "Per clip (warp / still):", "",
           "| clip | frames | SSIM | mouth SSIM | open r | closed agree (real closed frames) |",
           "|---|---|---|---|---|---|"]

    def f3(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r, s in zip(rows, still_rows):
        md.append(f"| {r['clip']} | {r['frames']} | {f3(r['ssim'])} / {f3(s['ssim'])} | {f3(r['ssim_mouth'])} / "
                  f"{f3(s['ssim_mouth'])} | {f3(r['open_r'])} | {f3(r['closed_agree'])} / "
                  f"{f3(s['closed_agree'])} ({r['real_closed_frames']}) |")
    md += ["", f"Strip: `{args.name}_strip.png` (first {len(samples)} clips; for each, the real frames "
           "over the output frames at six evenly spaced times).", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
