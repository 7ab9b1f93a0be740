#!/usr/bin/env python
"""Generated head motion (`--pose auto`) against real talking heads.

Real: the PC-AVS sample clips (``misc/Input``, ``misc/Pose_Source``, ``misc/Audio_Source`` of
github.com/Hangz-nju-cuhk/Talking-Face_PC-AVS: VoxCeleb talking heads, 224x224, 25 fps, with their
own speech), head angles per frame from trtalk's landmark tracker (`trtalk.warp.drive.PoseTracker`:
mediapipe face mesh, upper-face rigid fit relative to the clip's first frame, its default light
smoothing). Generated: `trtalk.motion.head.HeadMotion` (default options, seed 0) on each clip's own
audio (its mel windows as `trtalk render` computes them).

Per source, pooled over the clips: angle spread (per-clip standard deviation and 5-95 % range per
axis), angular speed distribution (per axis, deg/s: median, 90th, 99th percentile), the
correlation of head speed with speech energy (per clip, Pearson, speed and the voice-band mel
level both smoothed over 0.2 s), and the share of time the head is still (speed under 3 deg/s).
A PNG plots the generated and the real angle tracks over 10 s of one clip.

The clips are read from a folder (``--clips``; every .mp4 under it); they are not committed:

    python benchmarks/motion_compare.py --clips /tmp/pcavs --out benchmarks/results/motion
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.motion.head import HeadMotion, MotionConfig, wave_windows  # noqa: E402

FPS = 25.0
AXES = ("yaw", "pitch", "roll")
STILL_DEG_S = 3.0


def real_angles(path: Path) -> tuple[np.ndarray, float]:
    """(N, 3) tracked angles of a clip, and its frame rate."""
    from trtalk.face import open_media
    from trtalk.warp import mesh as M
    from trtalk.warp.drive import PoseTracker

    src = open_media(path)
    tracker = PoseTracker()
    out = []
    try:
        for frame in src:
            out.append(M.matrix_to_euler(tracker.update(frame)))
    finally:
        tracker.close()
    return np.array(out), float(getattr(src, "fps", None) or FPS)


def rendered_angles(renderer, angles: np.ndarray) -> np.ndarray:
    """The generated angles as the tracker sees them: rendered by the warp avatar (the built-in
    photo, mouth closed) and tracked back like the real clips (so both carry the tracker's jitter)."""
    from trtalk.warp import mesh as M
    from trtalk.warp.drive import PoseTracker

    tracker = PoseTracker()
    try:
        return np.array([M.matrix_to_euler(tracker.update(renderer.frame(0.0, 0.0, M.euler_to_matrix(*a))))
                         for a in angles])
    finally:
        tracker.close()


def smooth(x: np.ndarray, seconds: float = 0.2) -> np.ndarray:
    n = max(1, int(round(seconds * FPS)))
    return np.convolve(x, np.ones(n) / n, mode="same")


def energy(windows: np.ndarray) -> np.ndarray:
    """Voice-band mel level of each frame's newest audio (what the generator hears), 0..1."""
    return windows[:, 0, 4:48, -4:].mean(axis=(1, 2))


def stats(tracks: list[np.ndarray], energies: list[np.ndarray]) -> dict:
    speeds = [np.abs(np.diff(a, axis=0)) * FPS for a in tracks]
    sp_all = np.concatenate(speeds)
    norm = [np.linalg.norm(np.diff(a, axis=0), axis=1) * FPS for a in tracks]
    corr = []
    for s, e in zip(norm, energies):
        e = e[1:len(s) + 1]
        s = s[:len(e)]
        if len(s) > 10 and np.std(e) > 0 and np.std(s) > 0:
            corr.append(float(np.corrcoef(smooth(s), smooth(e))[0, 1]))
    return {
        "clips": len(tracks),
        "seconds": round(sum(len(a) for a in tracks) / FPS, 2),
        "std_deg": dict(zip(AXES, np.mean([a.std(axis=0) for a in tracks], axis=0).round(2).tolist())),
        "range_5_95_deg": dict(zip(AXES, np.mean([np.percentile(a, 95, axis=0) - np.percentile(a, 5, axis=0)
                                                  for a in tracks], axis=0).round(2).tolist())),
        "speed_p50": dict(zip(AXES, np.percentile(sp_all, 50, axis=0).round(2).tolist())),
        "speed_p90": dict(zip(AXES, np.percentile(sp_all, 90, axis=0).round(2).tolist())),
        "speed_p99": dict(zip(AXES, np.percentile(sp_all, 99, axis=0).round(2).tolist())),
        "speed_energy_corr": round(float(np.mean(corr)), 3) if corr else None,
        "speed_energy_corr_clips": [round(c, 3) for c in corr],
        "still_share": round(float(np.mean(np.concatenate(norm) < STILL_DEG_S)), 3),
    }


def plot(path: Path, real: np.ndarray, gen: np.ndarray, en: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(real), len(gen), int(10 * FPS))
    t = np.arange(n) / FPS
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    for i, name in enumerate(AXES):
        axes[i].plot(t, real[:n, i], label="real (tracked)", color="tab:blue")
        axes[i].plot(t, gen[:n, i], label="generated (--pose auto)", color="tab:orange")
        axes[i].set_ylabel(f"{name} (deg)")
        axes[i].grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[3].plot(t, en[:n], color="gray")
    axes[3].set_ylabel("speech level")
    axes[3].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, required=True, help="folder with the PC-AVS misc/ mp4 clips")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "motion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tracked", dest="tracked", action="store_false",
                    help="skip rendering the generated motion and tracking it back")
    args = ap.parse_args(argv)
    from trtalk.audio import load_audio

    clips = sorted(args.clips.rglob("*.mp4"))
    if not clips:
        raise SystemExit(f"no .mp4 under {args.clips}")
    from trtalk.face import read_image
    from trtalk.runtime.render import DEFAULT_FACE
    from trtalk.warp.render import WarpRenderer

    renderer = WarpRenderer(read_image(DEFAULT_FACE)) if args.tracked else None
    real, gen, seen, energies, names = [], [], [], [], []
    for clip in clips:
        wave = load_audio(clip)
        ang, fps = real_angles(clip)
        if abs(fps - FPS) > 0.01:
            print(f"skip {clip.name}: {fps} fps")
            continue
        win = wave_windows(wave, FPS, len(ang))
        g = HeadMotion(FPS, MotionConfig(seed=args.seed)).run(win)
        real.append(ang)
        gen.append(g)
        if renderer is not None:
            seen.append(rendered_angles(renderer, g))
        energies.append(energy(win))
        names.append(clip.name)
        print(f"{clip.parent.name}/{clip.name}: {len(ang)} frames; real yaw std {ang[:, 0].std():.2f}, "
              f"generated {g[:, 0].std():.2f}")
    result = {"real": stats(real, energies), "generated": stats(gen, energies), "clips": names,
              "generated_tracked": stats(seen, energies) if seen else None,
              "command": "python benchmarks/motion_compare.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": {"python": platform.python_version(), "platform": platform.platform()},
              "still_threshold_deg_s": STILL_DEG_S}
    args.out.mkdir(parents=True, exist_ok=True)
    longest = int(np.argmax([len(a) for a in real]))
    plot(args.out / "motion_tracks.png", real[longest], gen[longest], energies[longest],
         f"{names[longest]}: tracked head angles vs generated from the same audio (first 10 s)")
    (args.out / "motion_compare.json").write_text(json.dumps(result, indent=1) + "\n")
    cols = [result["real"], result["generated"]] + ([result["generated_tracked"]] if seen else [])
    rows = [("clips / seconds", *[f"{c['clips']} / {c['seconds']}" for c in cols])]
    for key, label in (("std_deg", "angle std (deg)"), ("range_5_95_deg", "5-95 % range (deg)"),
                       ("speed_p50", "speed p50 (deg/s)"), ("speed_p90", "speed p90 (deg/s)"),
                       ("speed_p99", "speed p99 (deg/s)")):
        for ax in AXES:
            rows.append((f"{label}, {ax}", *[f"{c[key][ax]:.2f}" for c in cols]))
    rows.append(("corr(head speed, speech level)", *[f"{c['speed_energy_corr']}" for c in cols]))
    rows.append((f"share of time still (< {STILL_DEG_S:g} deg/s)", *[f"{c['still_share']:.3f}" for c in cols]))
    md = ["# Generated head motion vs real talking heads", "",
          f"Command: `{result['command']}`", "",
          "Real: the PC-AVS sample clips (misc/Input, Pose_Source, Audio_Source; VoxCeleb, 224x224, "
          "25 fps, own audio) through trtalk's landmark tracker. Generated: `HeadMotion` (defaults, "
          f"seed {args.seed}) on the same clips' audio. Clips: {', '.join(names)}.", "",
          "The third column renders the generated angles with the warp avatar (built-in photo) and "
          "tracks them back with the same tracker, so it carries the tracker's jitter as the real "
          "column does (the speeds and the still share of the first two columns are not comparable "
          "without it).", "",
          "| metric | real (tracked) | generated |" + (" generated, rendered + tracked |" if seen else ""),
          "|---|---|---|" + ("---|" if seen else "")]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", f"Plot: `motion_tracks.png` ({names[longest]}, first 10 s).", ""]
    (args.out / "motion_compare.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
