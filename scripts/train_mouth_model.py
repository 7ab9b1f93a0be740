#!/usr/bin/env python
"""Train the warp avatar's audio-to-mouth model (`trtalk.warp.drive.MouthModel`) on talking clips.

Data: every .mp4 under ``--clips`` (talking heads with their own speech; the project uses the
PC-AVS sample clips, see benchmarks/self_reenact.py). Per video frame: the input is the frame's
20-row PC-AVS mel window exactly as `trtalk render` computes it (whole-file gain); the target is
the real inner-lip gap tracked with mediapipe's face mesh (points 13-14 over the face height
10-152), standardised per clip (a person's own scale of opening is not in the audio).

Model: ridge regression from the window's newest rows, mel bins pooled to a few bands, to that
score; then a monotone table maps the score to the avatar's opening by matching quantiles with
the training clips' gaps (a gap under 1.5 % of the face height, closed lips, maps to 0), so the
avatar closes its lips as often as the speakers did. The opening's unit: the avatar's open = 1 is
an inner-lip gap of (jaw_drop + lip_raise) interocular distances (`AvatarConfig`), converted with
the clips' mean face-height / interocular ratio.

Leave-one-clip-out: a model per clip trained on all the others, scored on that clip (Pearson r of
the opening with the real gap, and closed-lip agreement); those models are written to
``--loo-dir`` so the self-reenactment benchmark can render each clip with the model that never saw
it (``benchmarks/self_reenact.py --loo-models DIR``). The final model (all clips) goes to
``--out`` (default: the shipped trtalk/assets/mouth_model.safetensors).

    python scripts/train_mouth_model.py --clips /tmp/pcavs --loo-dir /tmp/mouth_loo
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtalk.warp import mesh as M  # noqa: E402
from trtalk.warp.avatar import AvatarConfig  # noqa: E402
from trtalk.warp.drive import (MouthConfig, MouthModel, mouth_params_from_mel, save_mouth_model,  # noqa: E402
                               window_features)

FPS = 25.0
CLOSED = 0.015
BANDS = 10
ROWS = (8, 20)
RIDGE = 100.0
CAL_POINTS = 41


def clip_data(path: Path, cache: Path | None) -> dict:
    """Mel (whole-file gain), per-frame windows (N, 20, 80) and tracked gaps of one clip (cached)."""
    from trtalk.audio import load_audio, mel_spectrogram, mel_windows, rms_gain
    from trtalk.face import FaceMeshDetector, open_media

    key = cache / f"{path.parent.name}_{path.stem}.npz" if cache else None
    if key is not None and key.is_file():
        d = np.load(key)
        return {k: d[k] for k in d.files}
    wave = load_audio(path)
    mel = mel_spectrogram(wave * np.float32(rms_gain(wave)))
    gaps, ratio = [], []
    with FaceMeshDetector(static_image_mode=False, max_num_faces=1) as det:
        for frame in open_media(path):
            faces = det.detect(np.ascontiguousarray(frame))
            if not faces:
                gaps.append(np.nan)
                continue
            m = np.asarray(faces[0], np.float64)[:, :2]
            fh = float(np.linalg.norm(m[10] - m[152]))
            gaps.append(float(np.linalg.norm(m[13] - m[14])) / max(fh, 1e-6))
            ratio.append(fh / max(float(np.linalg.norm(m[M.EYE_OUTER_RIGHT] - m[M.EYE_OUTER_LEFT])), 1e-6))
    gap = np.array(gaps)
    win = mel_windows(mel, len(gap), FPS)[:, 0].transpose(0, 2, 1)
    d = {"mel": mel, "windows": win, "gap": gap, "face_over_eyes": np.array([np.median(ratio)])}
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(key, **d)
    return d


def fit(data: list[dict], open_gap_fh: float) -> MouthModel:
    """Ridge fit on the clips' frames, then the quantile table score -> opening."""
    xs, ys, gaps = [], [], []
    for d in data:
        ok = np.isfinite(d["gap"])
        g = d["gap"][ok]
        xs.append(window_features(d["windows"][ok], BANDS, ROWS))
        ys.append((g - g.mean()) / max(g.std(), 1e-6))
        gaps.append(g)
    x, y, gap = np.concatenate(xs), np.concatenate(ys), np.concatenate(gaps)
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y - ym))
    bias = float(ym - xm @ w)
    score = x @ w + bias
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "trtalk" / "assets" / "mouth_model.safetensors")
    ap.add_argument("--loo-dir", type=Path, default=None, help="write the leave-one-clip-out models here")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trtalk-mouth-cache")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "self_reenact" / "mouth_model_loo.json")
    args = ap.parse_args(argv)

    clips = sorted(args.clips.rglob("*.mp4"))
    if not clips:
        raise SystemExit(f"no .mp4 under {args.clips}")
    data = [clip_data(c, args.cache) for c in clips]
    names = [f"{c.parent.name}/{c.stem}" for c in clips]
    cfg = AvatarConfig()
    ratio = float(np.mean([d["face_over_eyes"][0] for d in data]))
    open_gap_fh = (cfg.jaw_drop + cfg.lip_raise) / ratio  # avatar's open = 1 in face heights
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, d) in enumerate(zip(names, data)):
            model = fit(data[:i] + data[i + 1:], open_gap_fh)
            rows.append({"clip": name, **evaluate(model, d, open_gap_fh, Path(tmp))})
            if args.loo_dir is not None:
                args.loo_dir.mkdir(parents=True, exist_ok=True)
                save_mouth_model(model, args.loo_dir / f"{clips[i].stem}.safetensors")
            print(f"{name}: held-out r {rows[-1]['r']:.3f}, closed agree {rows[-1]['closed_agree']}", flush=True)
    final = fit(data, open_gap_fh)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_mouth_model(final, args.out)
    agree = [r["closed_agree"] for r in rows if r["closed_agree"] is not None]
    report = {
        "command": "python scripts/train_mouth_model.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "clips": names, "frames": int(sum(len(d["gap"]) for d in data)),
        "features": {"bands": BANDS, "rows": list(ROWS), "ridge": RIDGE, "weights": int(final.weight.size) + 1},
        "open_gap_face_heights": open_gap_fh,
        "held_out_mean_r": float(np.nanmean([r["r"] for r in rows])),
        "held_out_mean_closed_agree": float(np.mean(agree)) if agree else None,
        "held_out": rows,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"held-out mean r {report['held_out_mean_r']:.3f}, closed agree {report['held_out_mean_closed_agree']}; "
          f"model -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
