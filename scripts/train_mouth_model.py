#!/usr/bin/env python
"""Train the warp avatar's audio-to-mouth model (`trtalk.warp.drive.MouthModel`) on talking clips.

Data: talking-head videos with their own speech. Per video frame (on the 25 fps grid; audio decoded
at 16 kHz by `trtalk.audio.load_audio`, as `trtalk render` reads it): the input is the frame's
20-row PC-AVS mel window exactly as `trtalk render` computes it (whole-file gain); the target is
the real inner-lip gap tracked with mediapipe's face mesh (points 13-14 over the face height
10-152), standardised per clip (a person's own scale of opening is not in the audio). Clips at
another frame rate are tracked at their own rate and the gap track is resampled linearly to 25 fps;
``#crop=x,y,w,h`` cuts the panel with the real face out of a side-by-side video. Tracking runs once
per clip and is cached under ``--cache`` (mediapipe is CPU-heavy; run with ``taskset -c 1 nice``).

Clips (none is committed; fetch them from the public repositories below):

- ``--clips``: the 14 PC-AVS sample clips, the evaluation set of benchmarks/self_reenact.py
  (github.com/Hangz-nju-cuhk/Talking-Face_PC-AVS, ``misc/{Input,Pose_Source,Audio_Source,
  Mouth_Source}.zip`` at commit 201d2b946caa93a2ce7c798dd080be65959d2592; VoxCeleb, 224x224,
  25 fps): unzip them into one folder.
- ``--extra`` (training only; each also scored held out, by speaker group, so the choice of model
  is not tuned to the evaluation clips): see ``SOURCES`` below. Six HDTF clips from
  github.com/OpenTalker/SadTalker (``examples/ref_video/WDA_AlexandriaOcasioCortez_000.mp4``,
  ``WDA_KatieHill_000.mp4`` at cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8, and
  ``test/examples/source_image/{RD_Radio2_000,RD_Radio34_000,WDA_BobMenendez_000,
  WDA_EdMarkey0_000}.mp4`` from its history, commit 68651ebaa6fedad57ca9c878221f9b57212040cb;
  512x512, 25 fps), saved as ``st_<name>.mp4``; five from github.com/OpenTalker/video-retalking
  (``examples/face/{1..5}.mp4`` at d32e8e58248255e2d243eeaf3cba545dbe505ca8; 22-30 fps), saved as
  ``vr_<n>.mp4`` (``vr_3`` is the same recording as the SadTalker AOC clip: one group); one MEAD
  clip from github.com/jixinya/EAMM (``test/crop/M030_sad_3_001.mp4`` at
  e176a79865f792a1f8925934226de0b595c02c6d; 1920x1080, 30 fps) saved as ``eamm_M030.mp4``.
  Measured and left out: EAMM's ``test/video/*.mp4`` (their audio tracks are all zeros), and
  github.com/Dorniwang/PD-FGC-inference ``test/mp4s/test{1..8}.mp4`` (five 224-px panels; none of
  the three real driving panels follows the clip's audio: tracked lip gap vs voice envelope |r| <=
  0.23 at every lag within +-300 ms, and the eight clips carry only two distinct audio tracks).

    python scripts/train_mouth_model.py --clips /tmp/pcavs --loo-dir /tmp/mouth_loo \\
        --extra /tmp/extra_clips/st_*.mp4 /tmp/extra_clips/vr_{1,2,4,5}.mp4 \\
        '/tmp/extra_clips/st_WDA_AlexandriaOcasioCortez_000.mp4#group=aoc' '/tmp/extra_clips/vr_3.mp4#group=aoc' \\
        /tmp/extra_clips/eamm_M030.mp4

(a clip named twice is trained on once; the ``#group=`` form wins.)

Model: ridge regression from the window's newest rows, mel bins pooled to a few bands, to that
score (fitted on every training clip, extra included); then a monotone table maps the score to the
avatar's opening by matching quantiles with the lip gaps of the ``--clips`` in training (a gap
under 1.5 % of the face height, closed lips, maps to 0), so the avatar closes its lips as often as
those speakers did (``--table-from all`` matches all training clips instead). Why: held out, the
extra clips raise the regression's opening r, but their speakers (512-px HDTF interviews) part
their lips on far more frames than the 224-px VoxCeleb clips (closed 0-39 % vs 0-92 % of frames),
so a table matched to them closes the lips less often: with 10 bands, closed-lip agreement 0.27 on
PC-AVS and 0.69 on the extra clips, against 0.51 and 0.81 with the PC-AVS table, whose r is higher
too (0.36 and 0.29 against 0.33 and 0.30). With the extra data, 16 bands instead of 10 raised both
held-out sets (r 0.37 and 0.31); a small MLP (16 tanh units) and richer features (all 20 rows, row
deltas) were worse or no better held out on both sets (scripts/mouth_model_search.py and
benchmarks/results/self_reenact/mouth_model_search.json). The opening's unit: the avatar's open = 1 is
an inner-lip gap of (jaw_drop + lip_raise) interocular distances (`AvatarConfig`), converted with
the clips' mean face-height / interocular ratio.

Leave-one-clip-out: a model per evaluation clip trained on all the other clips (extra included),
scored on that clip (Pearson r of the opening with the real gap, and closed-lip agreement,
through the runtime's own mouth code); those models are written to ``--loo-dir`` so the
self-reenactment benchmark can render each clip with the model that never saw it
(``benchmarks/self_reenact.py --loo-models DIR``). The extra clips are scored the same way, each
by a model that saw no clip of its group. The final model (all clips) goes to ``--out`` (default:
the shipped trtalk/assets/mouth_model.safetensors).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.fsutil import atomic_output  # noqa: E402
from trtalk.warp import mesh as M  # noqa: E402
from trtalk.warp.avatar import AvatarConfig  # noqa: E402
from trtalk.warp.drive import (MouthConfig, MouthModel, mouth_params_from_mel, save_mouth_model,  # noqa: E402
                               window_features)

FPS = 25.0
CLOSED = 0.015
BANDS = 16
ROWS = (8, 20)
RIDGE = 100.0
CAL_POINTS = 41

#: Where the training clips come from (repository, path, commit), written into the report.
SOURCES = [
    {"clips": "PC-AVS sample clips (evaluation)", "repository": "github.com/Hangz-nju-cuhk/Talking-Face_PC-AVS",
     "path": "misc/{Input,Pose_Source,Audio_Source,Mouth_Source}.zip",
     "commit": "201d2b946caa93a2ce7c798dd080be65959d2592"},
    {"clips": "st_*.mp4 (HDTF)", "repository": "github.com/OpenTalker/SadTalker",
     "path": "examples/ref_video/WDA_{AlexandriaOcasioCortez,KatieHill}_000.mp4",
     "commit": "cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8"},
    {"clips": "st_*.mp4 (HDTF)", "repository": "github.com/OpenTalker/SadTalker",
     "path": "test/examples/source_image/{RD_Radio2_000,RD_Radio34_000,WDA_BobMenendez_000,WDA_EdMarkey0_000}.mp4",
     "commit": "68651ebaa6fedad57ca9c878221f9b57212040cb"},
    {"clips": "vr_{1..5}.mp4", "repository": "github.com/OpenTalker/video-retalking", "path": "examples/face/{1..5}.mp4",
     "commit": "d32e8e58248255e2d243eeaf3cba545dbe505ca8"},
    {"clips": "eamm_M030.mp4 (MEAD)", "repository": "github.com/jixinya/EAMM", "path": "test/crop/M030_sad_3_001.mp4",
     "commit": "e176a79865f792a1f8925934226de0b595c02c6d"},
]


@dataclass(frozen=True)
class ClipSpec:
    """One training clip: a video with its own speech, optionally a crop of its frame (the panel of a
    side-by-side video that holds the real talking face) and a speaker group (clips of one speaker
    are held out together in the extra clips' leave-one-out)."""

    path: Path
    crop: tuple[int, int, int, int] | None = None  # x, y, w, h in source pixels
    group: str | None = None

    @property
    def name(self) -> str:
        tag = "" if self.crop is None else "_crop" + "x".join(map(str, self.crop))
        return f"{self.path.parent.name}/{self.path.stem}{tag}"

    @property
    def key(self) -> str:
        return self.name.replace("/", "_")


def parse_specs(arg: str) -> list[ClipSpec]:
    """``PATH[#crop=x,y,w,h][#group=NAME]``: a video file, or a folder (every .mp4 under it)."""
    head, *opts = arg.split("#")
    crop, group = None, None
    for o in opts:
        k, _, v = o.partition("=")
        if k == "crop":
            crop = tuple(int(t) for t in v.split(","))
            if len(crop) != 4:
                raise SystemExit(f"--clips/--extra {arg}: crop needs x,y,w,h")
        elif k == "group":
            group = v
        else:
            raise SystemExit(f"--clips/--extra {arg}: unknown option {k!r} (crop=, group=)")
    path = Path(head)
    files = sorted(path.rglob("*.mp4")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SystemExit(f"no .mp4 at {arg}")
    return [ClipSpec(f, crop, group) for f in files]


def track_gaps(path: Path, crop: tuple[int, int, int, int] | None) -> tuple[np.ndarray, float, float]:
    """Inner-lip gap over face height of every frame of ``path`` (NaN without a face), the video's
    frame rate and the median face-height / interocular ratio; mediapipe's face mesh, tracked in
    order (as the benchmark measures the real clips)."""
    from trtalk.face import FaceMeshDetector
    from trtalk.media.read import iter_frames, probe

    fps = float(probe(path).fps or FPS)
    gaps, ratio = [], []
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        for frame in iter_frames(path):
            if crop is not None:
                x, y, w, h = crop
                frame = frame[y:y + h, x:x + w]
            faces = det.detect(np.ascontiguousarray(frame))
            if not faces:
                gaps.append(np.nan)
                continue
            m = np.asarray(faces[0], np.float64)[:, :2]
            fh = float(np.linalg.norm(m[10] - m[152]))
            gaps.append(float(np.linalg.norm(m[13] - m[14])) / max(fh, 1e-6))
            ratio.append(fh / max(float(np.linalg.norm(m[M.EYE_OUTER_RIGHT] - m[M.EYE_OUTER_LEFT])), 1e-6))
    return np.array(gaps), fps, float(np.median(ratio)) if ratio else float("nan")


def to_frame_grid(gap: np.ndarray, fps: float, num: int) -> np.ndarray:
    """The gap track at ``fps`` resampled to ``num`` frames at 25 fps (linear between the two
    nearest source frames; NaN where either has no face). At 25 fps it is the track itself."""
    if abs(fps - FPS) < 1e-3:
        out = np.full(num, np.nan)
        out[:min(num, len(gap))] = gap[:num]
        return out
    pos = np.arange(num) / FPS * fps
    i0 = np.clip(np.floor(pos).astype(int), 0, len(gap) - 1)
    i1 = np.clip(i0 + 1, 0, len(gap) - 1)
    f = pos - np.floor(pos)
    out = (1 - f) * gap[i0] + f * gap[i1]
    out[pos > len(gap) - 1] = np.nan
    return out


def clip_data(spec: ClipSpec, cache: Path | None) -> dict:
    """Mel (whole-file gain, 16 kHz as `trtalk render` reads audio), per-frame windows (N, 20, 80) on
    the 25 fps grid, and the tracked gaps on that grid; the tracking is cached under ``cache``."""
    from trtalk.audio import load_audio, mel_spectrogram, mel_windows, num_video_frames, rms_gain

    key = cache / "tracks" / f"{spec.key}.npz" if cache else None
    if key is not None and key.is_file():
        t = np.load(key)
        gap_src, fps, ratio = t["gap"], float(t["fps"][0]), float(t["face_over_eyes"][0])
    else:
        gap_src, fps, ratio = track_gaps(spec.path, spec.crop)
        if key is not None:
            key.parent.mkdir(parents=True, exist_ok=True)
            tmp = key.with_name(key.stem + ".tmp.npz")
            np.savez_compressed(tmp, gap=gap_src, fps=np.array([fps]), face_over_eyes=np.array([ratio]))
            tmp.replace(key)
    wave = load_audio(spec.path)
    mel = mel_spectrogram(wave * np.float32(rms_gain(wave)))
    num = min(int(len(gap_src) / fps * FPS + 1e-6), num_video_frames(len(wave), FPS))
    gap = to_frame_grid(gap_src, fps, num)
    win = mel_windows(mel, num, FPS)[:, 0].transpose(0, 2, 1)
    return {"mel": mel, "windows": win, "gap": gap, "face_over_eyes": np.array([ratio])}


def fit(data: list[dict], open_gap_fh: float, calibration: list[dict] | None = None) -> MouthModel:
    """Ridge fit on the clips' frames, then the quantile table score -> opening, matched to the gaps
    of ``calibration`` (default: the same clips)."""
    xs, ys = [], []
    for d in data:
        ok = np.isfinite(d["gap"])
        g = d["gap"][ok]
        xs.append(window_features(d["windows"][ok], BANDS, ROWS))
        ys.append((g - g.mean()) / max(g.std(), 1e-6))
    x, y = np.concatenate(xs), np.concatenate(ys)
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y - ym))
    bias = float(ym - xm @ w)
    cal = data if not calibration else calibration
    score = np.concatenate([window_features(d["windows"][np.isfinite(d["gap"])], BANDS, ROWS) for d in cal]) @ w + bias
    gap = np.concatenate([d["gap"][np.isfinite(d["gap"])] for d in cal])
    q = np.linspace(0.0, 1.0, CAL_POINTS)
    sp = np.quantile(score, q)
    gq = np.quantile(gap, q)
    op = np.where(gq < CLOSED, 0.0, np.clip(gq / open_gap_fh, 0.0, 1.0))
    # Keep the table strictly increasing in score (np.interp's requirement) without moving it.
    sp = sp + np.arange(CAL_POINTS) * 1e-9
    return MouthModel(w, bias, BANDS, ROWS, sp, op)


def evaluate(model: MouthModel, d: dict, open_gap_fh: float, workdir: Path) -> dict:
    """Held-out scores of ``model`` on one clip, through the runtime's own mouth code (follower
    included): r of the opening with the real gap, closed-lip agreement of the opening."""
    path = save_mouth_model(model, workdir / "eval.safetensors")
    cfg = MouthConfig(model=str(path))
    from trtalk.warp.drive import _cached_model

    _cached_model.cache_clear()
    opening = mouth_params_from_mel(d["mel"], len(d["gap"]), FPS, cfg)[:, 0]
    ok = np.isfinite(d["gap"])
    g, o = d["gap"][ok], opening[ok].astype(np.float64)
    r = float(np.corrcoef(g, o)[0, 1]) if o.std() > 0 and g.std() > 0 else float("nan")
    closed = g < CLOSED
    agree = float(np.mean(o[closed] * open_gap_fh < CLOSED)) if closed.any() else None
    return {"r": r, "closed_agree": agree, "real_closed": int(closed.sum()),
            "out_closed_share": float(np.mean(o * open_gap_fh < CLOSED))}


def audio_sync(d: dict, max_ms: int = 300) -> dict:
    """How well a clip's tracked lip gap follows its own audio: Pearson r of the gap with the voice-band
    envelope (mel bins 4-47, 50 ms smoothing) shifted by -max_ms..+max_ms (positive: audio later). A
    face that speaks the audio peaks at 0-100 ms (the lips lead the sound) with r ~0.3-0.6 on the
    PC-AVS clips; a face driven by something else stays near 0 at every lag."""
    env = np.convolve(d["mel"][:, 4:48].mean(-1), np.ones(5) / 5, "same")
    ok = np.isfinite(d["gap"])
    rs = {}
    for off in range(-max_ms // 10, max_ms // 10 + 1, 2):
        idx = np.clip(np.arange(len(d["gap"])) * 4 + 3 + off, 0, len(env) - 1)
        e, g = env[idx][ok], d["gap"][ok]
        rs[off * 10] = float(np.corrcoef(e, g)[0, 1]) if e.std() > 0 and g.std() > 0 else float("nan")
    best = max(rs, key=lambda k: -np.inf if np.isnan(rs[k]) else rs[k])
    return {"r_at_0ms": rs[0], "r_at_40ms": rs[40], "best_lag_ms": best, "best_r": rs[best],
            "max_abs_r": float(np.nanmax(np.abs(list(rs.values()))))}


def held_out(model: MouthModel, spec: ClipSpec, d: dict, open_gap_fh: float, workdir: Path, loo_dir: Path | None,
             tag: str) -> dict:
    row = {"clip": spec.name, "frames": int(len(d["gap"])), **evaluate(model, d, open_gap_fh, workdir)}
    if loo_dir is not None:
        loo_dir.mkdir(parents=True, exist_ok=True)
        save_mouth_model(model, loo_dir / f"{spec.path.stem}.safetensors")
    print(f"{tag} {spec.name}: held-out r {row['r']:.3f}, closed agree {row['closed_agree']}", flush=True)
    return row


def means(rows: list[dict]) -> dict:
    agree = [r["closed_agree"] for r in rows if r["closed_agree"] is not None]
    return {"clips": len(rows), "mean_r": float(np.nanmean([r["r"] for r in rows])) if rows else None,
            "mean_closed_agree": float(np.mean(agree)) if agree else None}


def main(argv: list[str] | None = None) -> int:
    global BANDS, ROWS, RIDGE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="+", default=[],
                    help="evaluation clips (PATH[#crop=x,y,w,h][#group=NAME]; a folder means every .mp4 "
                         "under it): each gets a leave-one-clip-out model (--loo-dir)")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more training clips, same syntax; held out by group (a clip without #group= is "
                         "its own group) for the report only")
    ap.add_argument("--out", type=Path, default=ROOT / "trtalk" / "assets" / "mouth_model.safetensors")
    ap.add_argument("--loo-dir", type=Path, default=None, help="write the evaluation clips' leave-one-out models here")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trtalk-mouth-cache",
                    help="tracked lip gaps per clip (mediapipe runs once per clip)")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "self_reenact" / "mouth_model_loo.json")
    ap.add_argument("--bands", type=int, default=BANDS, help="mel bins pooled into this many bands (divides 80)")
    ap.add_argument("--rows", type=int, nargs=2, default=list(ROWS), help="window rows used, [first, last + 1)")
    ap.add_argument("--ridge", type=float, default=RIDGE, help="ridge strength")
    ap.add_argument("--sync-check", nargs="*", default=None,
                    help="only measure whether these clips' (panels') lips follow their audio (audio_sync), then exit")
    ap.add_argument("--sync-report", type=Path, default=None, help="JSON for --sync-check")
    ap.add_argument("--table-from", choices=("clips", "all"), default="clips",
                    help="whose lip gaps the score -> opening table matches: the --clips (default) or all clips")
    args = ap.parse_args(argv)
    table_from_clips = args.table_from == "clips"
    BANDS, ROWS, RIDGE = args.bands, tuple(args.rows), args.ridge
    if 80 % BANDS or not 0 <= ROWS[0] < ROWS[1] <= 20:
        ap.error("--bands must divide 80 and --rows lie within 0..20")
    if args.sync_check:
        rows = []
        for spec in (s for a in args.sync_check for s in parse_specs(a)):
            rows.append({"clip": spec.name, **audio_sync(clip_data(spec, args.cache))})
            print(json.dumps(rows[-1]), flush=True)
        if args.sync_report is not None:
            args.sync_report.write_text(json.dumps({
                "command": "python scripts/train_mouth_model.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                "measure": audio_sync.__doc__.split("\n\n")[0].replace("\n", " "), "clips": rows}, indent=1) + "\n")
        return 0
    if not args.clips:
        ap.error("--clips is required (the evaluation clips)")

    evals = [s for a in args.clips for s in parse_specs(a)]
    by_key: dict[str, ClipSpec] = {}
    for s in (s for a in args.extra for s in parse_specs(a)):
        if s.key not in by_key or s.group is not None:  # named twice: once, the #group= form wins
            by_key[s.key] = s
    eval_keys = {s.key for s in evals}
    extras = [s for s in by_key.values() if s.key not in eval_keys]
    data = {s.key: clip_data(s, args.cache) for s in evals + extras}
    for s in evals + extras:
        if not np.isfinite(data[s.key]["gap"]).any() or not np.any(data[s.key]["mel"]):
            raise SystemExit(f"{s.name}: no tracked face or silent audio; leave it out")
    cfg = AvatarConfig()
    ratio = float(np.mean([d["face_over_eyes"][0] for d in data.values()]))
    open_gap_fh = (cfg.jaw_drop + cfg.lip_raise) / ratio  # avatar's open = 1 in face heights
    eval_rows, extra_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in evals:
            others = [data[o.key] for o in evals if o.key != s.key]
            model = fit(others + [data[o.key] for o in extras], open_gap_fh, others if table_from_clips else None)
            eval_rows.append(held_out(model, s, data[s.key], open_gap_fh, Path(tmp), args.loo_dir, "eval"))
        for s in extras:
            group = s.group or s.key
            model = fit([data[o.key] for o in evals] + [data[o.key] for o in extras if (o.group or o.key) != group],
                        open_gap_fh, [data[o.key] for o in evals] if table_from_clips else None)
            extra_rows.append(held_out(model, s, data[s.key], open_gap_fh, Path(tmp), None, "extra"))
    final = fit(list(data.values()), open_gap_fh, [data[s.key] for s in evals] if table_from_clips else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_mouth_model(final, args.out)
    report = {
        "command": "python scripts/train_mouth_model.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "sources": SOURCES,
        "clips": [s.name for s in evals], "extra_clips": [{"clip": s.name, "group": s.group or s.key} for s in extras],
        "frames": int(sum(len(data[s.key]["gap"]) for s in evals)),
        "extra_frames": int(sum(len(data[s.key]["gap"]) for s in extras)),
        "features": {"bands": BANDS, "rows": list(ROWS), "ridge": RIDGE, "weights": int(final.weight.size) + 1},
        "table_from": args.table_from,
        "open_gap_face_heights": open_gap_fh,
        "held_out_mean_r": means(eval_rows)["mean_r"],
        "held_out_mean_closed_agree": means(eval_rows)["mean_closed_agree"],
        "extra_held_out": means(extra_rows),
        "held_out": eval_rows, "extra_held_out_rows": extra_rows,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.report) as tmp_report:
        tmp_report.write_text(json.dumps(report, indent=1) + "\n")
    e = report["extra_held_out"]
    print(f"evaluation clips held out: mean r {report['held_out_mean_r']:.3f}, closed agree "
          f"{report['held_out_mean_closed_agree']}; extra clips held out: mean r {e['mean_r']}, closed agree "
          f"{e['mean_closed_agree']}; model -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
