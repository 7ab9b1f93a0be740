#!/usr/bin/env python
"""Leave-one-clip-out search over audio-to-mouth variants (the evidence behind the shipped choice).

Every number is held out: a model is trained on all clips but one and scored on that one (Pearson
r of its output with the tracked inner-lip gap, mediapipe points 13-14 over 10-152), averaged over
the clips. Data: ``scripts/train_mouth_model.py``'s per-clip cache (mel, the 20-row PC-AVS windows
the live path hands the avatar, and the tracked gaps). Four questions:

1. *lag*: which audio time (relative to the video frame) the lip gap follows best (the voice-band
   envelope's correlation with the gap at offsets of -80..+80 ms);
2. *features and model* (raw model output, before the closure rules and the follower; evaluation clips only): the first model's
   features (pooled mel bands of rows 8-19) against richer ones (all 20 rows with the voice-band
   envelope, its deltas and the spectral flux; several pooled context scales), ridge at a few
   strengths, a 1-hidden-layer MLP (seeded torch, a few thousand weights), a smoothed target, and
   per-clip feature normalisation (mean over the whole clip: an upper bound for a causal running
   normalisation);
3. *runtime* (the shipped pipeline: held-out ridge models from ``--loo-dir``, the closure rules and
   the follower, exactly ``trtalk.warp.drive.mouth_params_from_mel``): where in the window the
   closure is judged (``MouthConfig.close_lead``) and the stop-gap dip rule (``close_dip``);
4. closed-lip agreement of (3): the share of the real closed frames (gap < 1.5 % of the face
   height) where the output's gap is closed too.

5. *with the extra clips* (scripts/train_mouth_model.py's ``--extra``): ridge variants (pooled
   bands, rows, strength, whose gaps the table matches) at runtime, held out on the evaluation
   clips and on the extra clips (by speaker group).

    python scripts/mouth_model_search.py --clips /tmp/pcavs --loo-dir /tmp/mouth_loo --extra <as for training>
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from trtalk.fsutil import atomic_output  # noqa: E402
from trtalk.warp.drive import MouthConfig, mouth_params_from_mel  # noqa: E402

CLOSED = 0.015
VOICE = (4, 48)
SEGMENTS = ((0, 4), (4, 8), (8, 10), (10, 12), (12, 14), (14, 17), (17, 20))


def pool(w: np.ndarray, bands: int) -> np.ndarray:
    return w.reshape(*w.shape[:-1], bands, w.shape[-1] // bands).mean(-1)


def feat_shipped(w: np.ndarray) -> np.ndarray:
    return pool(w[:, 8:20], 10).reshape(len(w), -1)


def feat_rows_deltas(w: np.ndarray) -> np.ndarray:
    env = w[:, :, VOICE[0]:VOICE[1]].mean(-1)
    flux = np.clip(np.diff(w, axis=1), 0, None).mean(-1)
    return np.concatenate([pool(w[:, 4:], 10).reshape(len(w), -1), env, np.diff(env, axis=1), flux], 1)


def feat_scales(w: np.ndarray) -> np.ndarray:
    p = pool(w, 8)
    env = w[:, :, VOICE[0]:VOICE[1]].mean(-1)
    fe = np.stack([env[:, a:b].mean(1) for a, b in SEGMENTS], 1)
    return np.concatenate([p[:, a:b].mean(1) for a, b in SEGMENTS] + [fe, np.diff(fe, axis=1)], 1)


FEATURES = {"rows 8-19, 10 bands (the first model)": feat_shipped, "20 rows + envelope, deltas, flux": feat_rows_deltas,
            "7 context scales + envelope and deltas": feat_scales}


def target(gap: np.ndarray, smooth: int) -> np.ndarray:
    g = gap.copy()
    if smooth > 1:
        filled = np.where(np.isfinite(g), g, np.nanmean(g))
        g = np.where(np.isfinite(g), np.convolve(filled, np.ones(smooth) / smooth, "same"), np.nan)
    return (g - np.nanmean(g)) / max(float(np.nanstd(g)), 1e-6)


def ridge(x: np.ndarray, y: np.ndarray, lam: float):
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - ym))
    return lambda z: z @ w + (ym - xm @ w)


def mlp(x: np.ndarray, y: np.ndarray, hidden: int, decay: float, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    xm, xs = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - xm) / xs, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=decay)
    for _ in range(300):
        opt.zero_grad()
        loss = ((net(xt)[:, 0] - yt) ** 2).mean()
        loss.backward()
        opt.step()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.tensor((z - xm) / xs, dtype=torch.float32))[:, 0].numpy()
    return predict


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def loo_raw(data: list[dict], feat, fitter, smooth: int = 0, clip_norm: bool = False) -> list[float]:
    xs = [feat(d["windows"]) for d in data]
    if clip_norm:
        xs = [x - x.mean(0) for x in xs]
    rs = []
    for i in range(len(data)):
        x = np.concatenate([xs[j][np.isfinite(d["gap"])] for j, d in enumerate(data) if j != i])
        y = np.concatenate([target(d["gap"], smooth)[np.isfinite(d["gap"])] for j, d in enumerate(data) if j != i])
        pred = fitter(x, y)(xs[i])
        ok = np.isfinite(data[i]["gap"])
        rs.append(pearson(pred[ok], data[i]["gap"][ok]))
    return rs


def loo_runtime(data: list[dict], stems: list[str], loo_dir: Path, cfg: MouthConfig,
                open_gap_fh: float) -> tuple[list[float], list[float]]:
    rs, agree = [], []
    for d, stem in zip(data, stems):
        o = mouth_params_from_mel(d["mel"], len(d["gap"]), 25.0,
                                  replace(cfg, model=str(loo_dir / f"{stem}.safetensors")))[:, 0].astype(np.float64)
        ok = np.isfinite(d["gap"])
        g, o = d["gap"][ok], o[ok]
        rs.append(pearson(o, g))
        if (g < CLOSED).any():
            agree.append(float(np.mean(o[g < CLOSED] * open_gap_fh < CLOSED)))
    return rs, agree


def with_extra(T, specs: list, data: list[dict], extras: list, extra_data: list[dict], open_gap_fh: float) -> list[dict]:
    """Runtime scores (closure rules and follower included) of ridge variants trained with the extra
    clips, held out on both sets: each evaluation clip by a model that never saw it, each extra clip
    by one that saw no clip of its group; the table matched to the evaluation clips in training
    ("clips") or to all training clips ("all")."""
    out = []
    variants = [(10, (8, 20), 100.0, "none"), (10, (8, 20), 100.0, "all"), (10, (8, 20), 100.0, "clips"),
                (10, (8, 20), 300.0, "clips"), (10, (8, 20), 1000.0, "clips"), (10, (4, 20), 300.0, "clips"),
                (10, (6, 20), 100.0, "clips"), (10, (10, 20), 100.0, "clips"), (16, (8, 20), 100.0, "clips"),
                (16, (8, 20), 300.0, "clips"), (20, (8, 20), 100.0, "clips"), (20, (8, 20), 300.0, "clips"),
                (40, (8, 20), 300.0, "clips")]
    with tempfile.TemporaryDirectory() as tmp:
        for bands, rows, lam, table in variants:
            T.BANDS, T.ROWS, T.RIDGE = bands, rows, lam
            use_extra = table != "none"  # "none": the evaluation clips alone (the model before the extra clips)
            res = {"bands": bands, "rows": list(rows), "ridge": lam,
                   "trained_on": "evaluation + extra clips" if use_extra else "evaluation clips only",
                   "table_from": "all" if table == "none" else table}
            for set_name, clips, ds in (("evaluation", specs, data), ("extra", extras, extra_data)):
                rs, agree = [], []
                for s, d in zip(clips, ds):
                    group = s.group or s.key
                    ev_d = [od for o, od in zip(specs, data) if o.key != s.key]
                    ex_d = [od for o, od in zip(extras, extra_data) if (o.group or o.key) != group] if use_extra else []
                    model = T.fit(ev_d + ex_d, open_gap_fh, ev_d if table == "clips" else None)
                    e = T.evaluate(model, d, open_gap_fh, Path(tmp))
                    rs.append(e["r"])
                    if e["closed_agree"] is not None:
                        agree.append(e["closed_agree"])
                res[f"{set_name}_held_out_r"] = float(np.nanmean(rs))
                res[f"{set_name}_closed_agree"] = float(np.mean(agree))
            out.append(res)
            print(json.dumps(res), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="+", required=True, help="the evaluation clips, as scripts/train_mouth_model.py takes them")
    ap.add_argument("--extra", nargs="*", default=[], help="the extra training clips, as scripts/train_mouth_model.py takes them")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trtalk-mouth-cache",
                    help="scripts/train_mouth_model.py's tracking cache")
    ap.add_argument("--loo-dir", type=Path, required=True, help="its leave-one-clip-out models")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "self_reenact" / "mouth_model_search.json")
    args = ap.parse_args(argv)
    import train_mouth_model as T

    specs = [s for a in args.clips for s in T.parse_specs(a)]
    by_key = {}
    for s in (s for a in args.extra for s in T.parse_specs(a)):
        if s.key not in by_key or s.group is not None:
            by_key[s.key] = s
    extras = [s for s in by_key.values() if s.key not in {e.key for e in specs}]
    data = [T.clip_data(s, args.cache) for s in specs]
    extra_data = [T.clip_data(s, args.cache) for s in extras]
    stems = [s.path.stem for s in specs]
    from trtalk.warp.avatar import AvatarConfig

    ratio = float(np.mean([d["face_over_eyes"][0] for d in data + extra_data]))
    open_gap_fh = (AvatarConfig().jaw_drop + AvatarConfig().lip_raise) / ratio
    report: dict = {"command": "python scripts/mouth_model_search.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                    "machine": {"python": platform.python_version(), "platform": platform.platform()},
                    "clips": len(data), "frames": int(sum(len(d["gap"]) for d in data))}

    lag = {}
    for off in range(-8, 9, 2):  # mel frames of 10 ms
        rs = []
        for d in data:
            env = np.convolve(d["mel"][:, VOICE[0]:VOICE[1]].mean(-1), np.ones(5) / 5, "same")
            idx = np.clip(np.arange(len(d["gap"])) * 4 + 3 + off, 0, len(env) - 1)
            ok = np.isfinite(d["gap"])
            rs.append(pearson(env[idx][ok], d["gap"][ok]))
        lag[f"{off * 10:+d} ms"] = float(np.nanmean(rs))
        print(f"lag {off * 10:+d} ms: envelope r {lag[f'{off * 10:+d} ms']:.3f}", flush=True)
    report["envelope_r_by_audio_offset"] = lag

    raw = []
    variants = [(name, f, f"ridge {lam:g}", lambda x, y, lam=lam: ridge(x, y, lam), 0, False)
                for name, f in FEATURES.items() for lam in (10.0, 100.0, 1000.0)]
    variants += [("rows 8-19, 10 bands (the first model)", feat_shipped, "ridge 100, target smoothed over 3 frames",
                  lambda x, y: ridge(x, y, 100.0), 3, False),
                 ("rows 8-19, 10 bands (the first model), per-clip mean removed", feat_shipped, "ridge 100",
                  lambda x, y: ridge(x, y, 100.0), 0, True),
                 ("7 context scales, per-clip mean removed", feat_scales, "ridge 10",
                  lambda x, y: ridge(x, y, 10.0), 0, True)]
    variants += [(name, f, f"MLP 1 hidden layer of {h}, weight decay {wd:g}",
                  lambda x, y, h=h, wd=wd: mlp(x, y, h, wd), 0, False)
                 for name, f in list(FEATURES.items())[::2] for h, wd in ((16, 1e-3), (32, 1e-2))]
    for name, feat, model, fitter, smooth, norm in variants:
        rs = loo_raw(data, feat, fitter, smooth, norm)
        raw.append({"features": name, "model": model, "held_out_mean_r": float(np.nanmean(rs)),
                    "per_clip": [round(r, 3) for r in rs]})
        print(f"{name} | {model}: held-out r {raw[-1]['held_out_mean_r']:.3f}", flush=True)
    report["raw_model_output"] = raw

    runtime = []
    for lead in (0, 2, 4, 5, 6, 7):
        for dip in (0.18, 1.0):
            rs, agree = loo_runtime(data, stems, args.loo_dir, MouthConfig(close_lead=lead, close_dip=dip), open_gap_fh)
            runtime.append({"close_lead_rows": lead, "close_dip": dip, "held_out_mean_r": float(np.nanmean(rs)),
                            "closed_agree": float(np.mean(agree))})
            print(f"runtime close_lead {lead} close_dip {dip:g}: r {runtime[-1]['held_out_mean_r']:.3f}, "
                  f"closed agree {runtime[-1]['closed_agree']:.3f}", flush=True)
    report["runtime"] = runtime
    if extras:
        report["with_extra_clips"] = with_extra(T, specs, data, extras, extra_data, open_gap_fh)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.report) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
