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

Then (``motion_style.md``, `style_eval`): personal vs generic head motion styles, held out: each
clip's styles are fitted on its first 60 % and compared on its last 40 %, with a cross table.
``--write-generic PATH`` also writes the generic style fitted on every clip, whole (how
``trtalk/assets/motion_style.json`` was made).

The clips are read from a folder (``--clips``; every .mp4 under it); they are not committed. On a
fresh machine, from a clone of github.com/Hangz-nju-cuhk/Talking-Face_PC-AVS:

    for z in Audio_Source Input Pose_Source; do
        git --git-dir=<clone>/.git show HEAD:misc/$z.zip > $z.zip; unzip -q $z.zip -d /tmp/pcavs/$z
    done
    python benchmarks/motion_compare.py --clips /tmp/pcavs --out benchmarks/results/motion \
        --track-cache /tmp/pcavs-tracks
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


def cached_real_angles(path: Path, cache: Path | None) -> tuple[np.ndarray, float]:
    """`real_angles`, kept in ``cache`` (one .npz per clip, keyed by folder, name and size) so a
    rerun tracks nothing."""
    if cache is None:
        return real_angles(path)
    key = cache / f"{path.parent.name}_{path.stem}_{path.stat().st_size}.npz"
    if key.exists():
        z = np.load(key)
        return z["angles"], float(z["fps"])
    ang, fps = real_angles(path)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = key.with_suffix(".tmp.npz")
    np.savez(tmp, angles=ang, fps=fps)
    tmp.replace(key)
    return ang, fps


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


EVAL_SEEDS = tuple(range(8))
FIT_SHARE = 0.6
#: prior seconds of the shrinkage ceiling (`style_eval`)
SHRINK_SECONDS = (2.0, 5.0, 10.0, 20.0, 40.0)


def _fit_pair(args: tuple) -> tuple:
    """(generic style fitted on the other clips, whole, personal style of clip i on its first 60 %)."""
    from trtalk.motion.fit import PRIOR_SECONDS, fit_motion
    from trtalk.motion.style import MotionStyle

    i, name, fit, whole = args
    g, _ = fit_motion([t for j, t in enumerate(whole) if j != i], FPS, MotionStyle(), rest=False,
                      name=f"generic-loo-{i}")
    p, _ = fit_motion([fit[i]], FPS, g, name=name, prior_seconds=PRIOR_SECONDS)
    print(f"styles {name}: fitted", flush=True)
    return g, p


def _cross_column(args: tuple) -> list[float]:
    """Distance of every personal style, driven by clip i's held-out audio, to its held-out motion."""
    from trtalk.motion.fit import distance, motion_stats, simulate, speech_level

    i, personal, held, real = args
    return [float(np.mean([distance(motion_stats(simulate(p, held.windows, FPS, s), speech_level(held.windows), FPS), real)
                           for s in EVAL_SEEDS])) for p in personal]


def _deviate(gen, own, gen_own, weight: float):
    """``gen`` (`Stats`) times (``own`` / ``gen_own``) ** ``weight``, term by term (the correlation:
    plus ``weight`` times the difference; the pause ratio: ``gen``'s)."""
    from trtalk.motion.fit import EPS, Stats

    def ratio(k: str) -> np.ndarray:
        return np.maximum(getattr(gen, k), EPS) * (np.maximum(getattr(own, k), EPS)
                                                   / np.maximum(getattr(gen_own, k), EPS)) ** weight

    corr = gen.corr + weight * (own.corr - gen_own.corr) if np.isfinite(own.corr) and np.isfinite(gen_own.corr) else gen.corr
    return Stats(ratio("std"), ratio("p50"), ratio("p90"), ratio("p99"), ratio("band"), corr, gen.pause_ratio)


def style_eval(names: list[str], real: list[np.ndarray], windows: list[np.ndarray], out: Path,
               command: str, jobs: int = 2) -> dict:
    """Personal vs generic styles, held out: fit on the first 60 % of each clip, generate on the
    last 40 % of its audio (seeds 0-7), compare with the real motion of that 40 % (module
    docstring of `trtalk.motion.fit`: `distance`). The generic style of clip i is fitted on the
    other clips, whole (leave one out: it never sees clip i); the personal one on clip i's first 60 %, shrunk
    towards that generic style (`PRIOR_SECONDS`). Also: the cross table (clip j's personal style
    driven by clip i's held-out audio vs clip i's held-out motion), the statistics-copy bound
    (clip i's own first-60 % statistics, no generator, against its last 40 %), and the shipped
    generic style (fitted on all clips, whole), its angle spread on the held-out parts and on
    whole clips."""
    from trtalk.motion.fit import PRIOR_SECONDS, Stats, Track, blend, distance, motion_stats, simulate, speech_level
    from trtalk.motion.style import MotionStyle, generic_style

    n = len(names)
    cut = [int(FIT_SHARE * len(a)) for a in real]
    fit = [Track(a[:k], w[:k]) for a, w, k in zip(real, windows, cut)]
    whole = [Track(a, w) for a, w in zip(real, windows)]
    held = [Track(a[k:], w[k:]) for a, w, k in zip(real, windows, cut)]
    held_stats = [motion_stats(t.angles, speech_level(t.windows), FPS) for t in held]
    fit_stats = [motion_stats(t.angles, speech_level(t.windows), FPS) for t in fit]
    hand = MotionStyle()

    def gen_stats(style: MotionStyle, t: Track) -> list[Stats]:
        return [motion_stats(simulate(style, t.windows, FPS, s), speech_level(t.windows), FPS) for s in EVAL_SEEDS]

    def dist(style: MotionStyle, i: int) -> float:
        return float(np.mean([distance(g, held_stats[i]) for g in gen_stats(style, held[i])]))

    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pairs = list(pool.map(_fit_pair, [(i, names[i], fit, whole) for i in range(n)]))
        generic, personal = [g for g, _ in pairs], [p for _, p in pairs]
        cross = np.array(list(pool.map(_cross_column, [(i, personal, held[i], held_stats[i]) for i in range(n)]))).T
    rows = []
    for i in range(n):
        rows.append({"clip": names[i], "fit_s": round(cut[i] / FPS, 2), "held_out_s": round(len(held[i].angles) / FPS, 2),
                     "personal": float(cross[i, i]), "generic": dist(generic[i], i), "hand_set": dist(hand, i),
                     "copy_fit_stats": distance(fit_stats[i], held_stats[i]),
                     "copy_others_stats": distance(Stats.mean([fit_stats[j] for j in range(n) if j != i]), held_stats[i])})
    # the ceiling of shrinkage without a generator: clip i's own first-60 % statistics shrunk
    # towards the other clips' mean by T0 seconds (as `fit_motion` shrinks its target), against the
    # other clips' mean alone, on the held-out statistics
    others = [Stats.mean([fit_stats[j] for j in range(n) if j != i]) for i in range(n)]
    ceiling = {}
    for t0 in SHRINK_SECONDS:
        d_own = [distance(blend(fit_stats[i], others[i], cut[i] / FPS / (cut[i] / FPS + t0)), held_stats[i])
                 for i in range(n)]
        ceiling[t0] = {"wins": int(sum(d < distance(others[i], held_stats[i]) for i, d in enumerate(d_own))),
                       "mean": round(float(np.mean(d_own)), 4)}
    # the ceiling of an ideal personal style: one whose generated statistics on the held-out audio are
    # the generic style's, times the clip's own first-60 % deviation from the generic's generated
    # statistics on that part (shrunk by T0 seconds): what a fit without fitting error could give
    gen_fit = [Stats.mean(gen_stats(generic[i], fit[i])) for i in range(n)]
    gen_held = [gen_stats(generic[i], held[i]) for i in range(n)]
    ideal = {}
    for t0 in SHRINK_SECONDS:
        d_ideal, d_gen = [], []
        for i in range(n):
            wt = cut[i] / FPS / (cut[i] / FPS + t0)
            d_ideal.append(float(np.mean([distance(_deviate(g, fit_stats[i], gen_fit[i], wt), held_stats[i])
                                          for g in gen_held[i]])))
            d_gen.append(float(np.mean([distance(g, held_stats[i]) for g in gen_held[i]])))
        ideal[t0] = {"wins": int(sum(a < b for a, b in zip(d_ideal, d_gen))), "mean": round(float(np.mean(d_ideal)), 4),
                     "generic_mean": round(float(np.mean(d_gen)), 4)}
    own = [int(np.argmin(cross[:, i]) == i) for i in range(n)]
    rank = [int((cross[:, i] < cross[i, i]).sum()) + 1 for i in range(n)]
    copy_cross = np.array([[distance(fit_stats[j], held_stats[i]) for i in range(n)] for j in range(n)])
    copy_own = [int(np.argmin(copy_cross[:, i]) == i) for i in range(n)]
    # the shipped generic style (``--write-generic`` refits it first, on every clip, whole)
    shipped = generic_style()
    real_std = np.mean([h.std for h in held_stats], axis=0)
    gen_std = np.mean([np.mean([g.std for g in gen_stats(shipped, held[i])], axis=0) for i in range(n)], axis=0)
    loo_std = np.mean([np.mean([g.std for g in gen_stats(generic[i], held[i])], axis=0) for i in range(n)], axis=0)
    hand_std = np.mean([np.mean([g.std for g in gen_stats(hand, held[i])], axis=0) for i in range(n)], axis=0)
    real_whole = np.mean([a.std(axis=0) for a in real], axis=0)
    gen_whole = np.mean([np.mean([g.std for g in gen_stats(shipped, whole[i])], axis=0) for i in range(n)], axis=0)
    loo_whole = np.mean([np.mean([g.std for g in gen_stats(generic[i], whole[i])], axis=0) for i in range(n)], axis=0)
    hand_whole = np.mean([np.mean([g.std for g in gen_stats(hand, whole[i])], axis=0) for i in range(n)], axis=0)
    wins = sum(r["personal"] < r["generic"] for r in rows)
    result = {"command": command, "clips": names, "eval_seeds": list(EVAL_SEEDS), "fit_share": FIT_SHARE,
              "prior_seconds": PRIOR_SECONDS, "rows": rows, "personal_wins": wins,
              "copy_fit_stats_wins": sum(r["copy_fit_stats"] < r["copy_others_stats"] for r in rows),
              "cross": cross.round(4).tolist(), "cross_own_closest": sum(own), "cross_own_rank": rank,
              "copy_cross_own_closest": sum(copy_own), "copy_shrunk": {str(k): v for k, v in ceiling.items()},
              "ideal_personal": {str(k): v for k, v in ideal.items()},
              "held_out_std": {"real_mean": real_std.round(3).tolist(), "generic_shipped": gen_std.round(3).tolist(),
                               "generic_loo": loo_std.round(3).tolist(), "hand_set": hand_std.round(3).tolist()},
              "whole_std": {"real_mean": real_whole.round(3).tolist(), "generic_shipped": gen_whole.round(3).tolist(),
                            "generic_loo": loo_whole.round(3).tolist(), "hand_set": hand_whole.round(3).tolist()},
              "generic_style": shipped.to_json()}
    (out / "motion_style.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# Personal vs generic head motion styles (held out)", "",
          f"Command: `{command}`", "",
          f"Clips: the {n} PC-AVS sample clips (VoxCeleb talking heads, 224x224, 25 fps, {sum(len(a) for a in real) / FPS:.1f} s "
          "in all, 4-14 s each), head angles from trtalk's landmark tracker. Each clip: styles fitted on its first "
          f"{FIT_SHARE:.0%} (`trtalk.motion.fit.fit_motion`), motion generated (`HeadMotion`, seeds "
          f"{EVAL_SEEDS[0]}-{EVAL_SEEDS[-1]}, distances averaged) from the audio of its last {1 - FIT_SHARE:.0%} and compared with the "
          "real motion of that last part.", "",
          "- personal: fitted on the clip's first 60 %, shrunk towards its generic style by "
          f"{PRIOR_SECONDS:g} s worth of it (the default of `trtalk motion fit`);",
          f"- generic: fitted on the other {n - 1} clips, whole (leave one out; it never sees the clip);",
          "- hand-set: the motion before styles (`MotionStyle()` defaults);",
          "- copy own / copy others: no generator: the real first-60 % statistics of the clip itself, or "
          "the mean of the other clips', used as the prediction (how much a person's own earlier motion tells "
          "about their later motion in these clips: the bound of any personal fit).", "",
          "Distance (`trtalk.motion.fit.distance`): the mean of |ln(generated / real)| over the per-axis angle std, "
          "speed p50 / p90 / p99 and the RMS in three bands (< 0.5, 0.5-2, > 2 Hz) (21 terms, floored at 0.05), "
          "and |difference| of corr(head speed, speech level) (1 term). Lower is closer.", "",
          "| clip | fit / held-out s | personal | generic (LOO) | hand-set | copy own | copy others |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['clip']} | {r['fit_s']} / {r['held_out_s']} | {r['personal']:.3f} | {r['generic']:.3f} | "
                  f"{r['hand_set']:.3f} | {r['copy_fit_stats']:.3f} | {r['copy_others_stats']:.3f} |")
    mean = {k: np.mean([r[k] for r in rows]) for k in ("personal", "generic", "hand_set", "copy_fit_stats", "copy_others_stats")}
    md.append(f"| mean | | {mean['personal']:.3f} | {mean['generic']:.3f} | {mean['hand_set']:.3f} | "
              f"{mean['copy_fit_stats']:.3f} | {mean['copy_others_stats']:.3f} |")
    md += ["", f"Personal closer than generic: **{wins} of {n}** clips. Copy own closer than copy others: "
           f"{result['copy_fit_stats_wins']} of {n}.", "",
           "Ceiling of any shrinkage, no generator: the clip's own first-60 % statistics shrunk towards the "
           "other clips' mean (`blend`, weight T / (T + T0), T the fitted seconds) against the other clips' mean "
           "alone, on the held-out statistics: "
           + "; ".join(f"T0 = {t0:g} s: closer on {v['wins']} of {n} (mean {v['mean']:.3f})" for t0, v in ceiling.items())
           + f"; copy others: mean {mean['copy_others_stats']:.3f}.", "",
           "Ceiling of an ideal personal style (a fit without fitting error): the generic (LOO) style's generated "
           "statistics on the held-out audio (seeds 0-7), each times the clip's own first-60 % statistics over the "
           "generic's generated ones on that part, to the power T / (T + T0); against the generic alone: "
           + "; ".join(f"T0 = {t0:g} s: closer on {v['wins']} of {n} (mean {v['mean']:.3f} vs {v['generic_mean']:.3f})"
                       for t0, v in ideal.items()) + ".", "",
           "Cross table: row = whose personal style, column = whose held-out audio and motion; cell = distance "
           "(the column's minimum in bold).", "",
           "| style \\ clip | " + " | ".join(str(i) for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for j in range(n):
        cells = [(f"**{cross[j, i]:.2f}**" if own[i] and j == i or np.argmin(cross[:, i]) == j else f"{cross[j, i]:.2f}")
                 for i in range(n)]
        md.append(f"| {j} {names[j]} | " + " | ".join(cells) + " |")
    md += ["", f"Held-out motion closest to its own style: **{sum(own)} of {n}** clips (rank of the own style per "
           f"clip, 1 = closest: {rank}). With the statistics copied instead of generated: {sum(copy_own)} of {n}.", "",
           "Angle std on the held-out parts (deg, yaw / pitch / roll; generated: mean over clips and seeds):", "",
           *_std_table(real_std, gen_std, loo_std, hand_std, "shipped (all clips, whole)", ""),
           "The same on whole clips (deg; generated: seeds 0-7 on each whole clip's audio):", "",
           *_std_table(real_whole, gen_whole, loo_whole, hand_whole, "shipped", ", whole clips")]
    (out / "motion_style.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


def _std_table(real, gen, loo, hand, shipped: str, where: str) -> list[str]:
    """Markdown: the angle-std table (real, generic shipped and leave-one-out, hand-set) and how far
    the generic styles are from the real mean per axis."""
    def row(name: str, v) -> str:
        return f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + " |"

    def off(g) -> str:
        return ", ".join(f"{ax} {a / r - 1:+.0%}" for ax, a, r in zip(AXES, g, real))

    return ["| | yaw | pitch | roll |", "|---|---|---|---|", row("real (tracked)", real),
            row(f"generic, {shipped}", gen), row("generic, leave one out", loo), row("hand-set (before styles)", hand),
            "", f"Generic within 20 % of the real mean per axis{where}: {off(gen)} (shipped); {off(loo)} (leave one out).",
            ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, required=True, help="folder with the PC-AVS misc/ mp4 clips")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "motion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tracked", dest="tracked", action="store_false",
                    help="skip rendering the generated motion and tracking it back")
    ap.add_argument("--no-styles", dest="styles", action="store_false",
                    help="skip the personal vs generic style evaluation (motion_style.md)")
    ap.add_argument("--track-cache", type=Path, default=None,
                    help="keep the tracked angles of each clip here (a rerun tracks nothing)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for the style fits")
    ap.add_argument("--write-generic", type=Path, default=None,
                    help="also write the generic style fitted on every clip (whole) here "
                         "(trtalk/assets/motion_style.json is made so)")
    args = ap.parse_args(argv)
    from trtalk.audio import load_audio

    clips = sorted(args.clips.rglob("*.mp4"))
    if not clips:
        raise SystemExit(f"no .mp4 under {args.clips}")
    from trtalk.face import read_image
    from trtalk.runtime.render import DEFAULT_FACE
    from trtalk.warp.render import WarpRenderer

    renderer = WarpRenderer(read_image(DEFAULT_FACE)) if args.tracked else None
    real, gen, seen, energies, names, wins = [], [], [], [], [], []
    for clip in clips:
        wave = load_audio(clip)
        ang, fps = cached_real_angles(clip, args.track_cache)
        if abs(fps - FPS) > 0.01:
            print(f"skip {clip.name}: {fps} fps")
            continue
        real.append(ang)
        wins.append(wave_windows(wave, FPS, len(ang)))
        names.append(clip.name)
    if args.write_generic is not None:
        # the shipped generic style: fitted on every clip, whole, before anything below uses it
        from trtalk.motion.fit import Track, fit_motion
        from trtalk.motion.style import MotionStyle, generic_style, save_style

        shipped, rep = fit_motion([Track(a, w) for a, w in zip(real, wins)], FPS, MotionStyle(), rest=False,
                                  name="generic",
                                  source=f"PC-AVS sample clips ({len(real)} VoxCeleb clips, misc/*.zip), whole")
        save_style(shipped, args.write_generic)
        generic_style.cache_clear()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generic_fit.json").write_text(json.dumps(rep, indent=1) + "\n")
        print(f"wrote {args.write_generic}: distance {rep['distance']} on unseen seeds")
    for ang, win, name in zip(real, wins, names):
        g = HeadMotion(FPS, MotionConfig(seed=args.seed)).run(win)
        gen.append(g)
        if renderer is not None:
            seen.append(rendered_angles(renderer, g))
        energies.append(energy(win))
        print(f"{name}: {len(ang)} frames; real yaw std {ang[:, 0].std():.2f}, "
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
          "25 fps, own audio) through trtalk's landmark tracker. Generated: `HeadMotion` (defaults: "
          f"the generic style, seed {args.seed}) on the same clips' audio. Clips: {', '.join(names)}.", "",
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
    if args.styles:
        style_eval(names, real, wins, args.out, result["command"], args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
