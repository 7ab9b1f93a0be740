#!/usr/bin/env python
"""Soak benchmark: `trtalk stream` from files on a real-time clock for minutes, watched from outside.

Runs ``python -m trtalk.cli stream --realtime`` as a subprocess, fed by a long speech file (the
built-in clip repeated) and, by default, a looped head-motion pose video, into the null sink (or
an mp4 with ``--record``). Every ``--interval`` seconds (5) this script reads the stream's RSS,
open file descriptors and threads (psutil), and the machine's load;
the stream's own periodic stats (``--stats``) give frames, drops and audio/video drift over time,
its ``--stats-json`` the final report. The property to show is flat memory: the result gives the
RSS slope in MB/min after a warm-up (least squares), next to the fd and thread counts.

    scripts/soak.py                                  # 10 min, PC-AVS small config, random weights
    scripts/soak.py --minutes 3 --model warp         # the built-in warp avatar
    scripts/soak.py --record                         # also encode an mp4 (the file grows, RSS should not)

Writes ``<out>/<name>.json`` (everything: command, machine, samples, stats series, the final
report) and ``<out>/<name>.md``; ``--name`` defaults to ``soak_<model>_<minutes>min``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    t_s: float  # since the process started
    rss_mb: float
    fds: int
    threads: int
    load1: float


@dataclass
class StatsPoint:
    t_s: float  # since the process started (when the line was read)
    frames: int
    seconds: float
    fps: float
    dropped: dict[str, int]
    drift_ms: float
    silence_s: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="stream length (default: 10)")
    ap.add_argument("--model", choices=("pcavs", "warp"), default="pcavs",
                    help="pcavs: the small config on random weights; warp: the built-in avatar (default: pcavs)")
    ap.add_argument("--pose", choices=("video", "static"), default="video",
                    help="a looped 4 s head-motion video, or the avatar's own pose (default: video)")
    ap.add_argument("--record", action="store_true", help="record an mp4 instead of the null sink")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default: 5)")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds after the stream starts left out of the slope (default: 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu")
    ap.add_argument("--name", default=None, help="result file stem (default: soak_<model>_<minutes>min)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs trtalk")
    ap.add_argument("--markdown-from", type=Path, metavar="JSON",
                    help="only rewrite the .md next to an earlier result's JSON (no run)")
    ap.add_argument("extra", nargs="*", help="more `trtalk stream` arguments (after --)")
    args = ap.parse_args(argv)
    if not (args.minutes > 0 and args.interval > 0):
        ap.error("--minutes and --interval must be positive")
    return args


# --------------------------------------------------------------------------- inputs


def write_long_speech(path: Path, seconds: float) -> None:
    """The built-in speech clip repeated to ``seconds``, 16 kHz mono 16-bit wav."""
    from trtalk.audio import load_audio
    from trtalk.runtime.render import DEFAULT_AUDIO

    clip = load_audio(DEFAULT_AUDIO)
    n = int(math.ceil(seconds * 16000))
    wave_ = np.tile(clip, n // len(clip) + 1)[:n]
    pcm = np.round(np.clip(wave_, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def write_pose_video(path: Path, seconds: float = 4.0, fps: int = 25) -> None:
    """The built-in photo with a slow head-like wobble (rotation +-8 deg, a few px of shift)."""
    import cv2

    from trtalk.media.mp4 import Mp4Sink
    from trtalk.runtime.render import DEFAULT_FACE

    rgb = cv2.cvtColor(cv2.imread(str(DEFAULT_FACE), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    cx, cy = 0.44 * w, 0.23 * h  # the astronaut's face centre
    with Mp4Sink(path, fps=fps) as sink:
        for i in range(int(seconds * fps)):
            t = i / fps
            m = cv2.getRotationMatrix2D((cx, cy), 8.0 * math.sin(2 * math.pi * t / 2.0), 1.0)
            m[0, 2] += 4.0 * math.sin(2 * math.pi * t / 1.3)
            m[1, 2] += 3.0 * math.sin(2 * math.pi * t / 1.7 + 0.5)
            sink.write(cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT101))


# --------------------------------------------------------------------------- watching


def proc_sample(pid: int, t_s: float) -> Sample | None:
    """The process's RSS, open file descriptors and threads now; None once it is exiting or gone."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return None  # exiting: a zombie has no memory to show
            rss, fds, threads = p.memory_info().rss, p.num_fds(), p.num_threads()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return Sample(round(t_s, 2), round(rss / 2 ** 20, 1), fds, threads, round(os.getloadavg()[0], 2))


_STATS_HEAD = re.compile(r"stats: (\d+) frames in ([\d.]+) s: ([\d.]+) fps")
_FINAL = re.compile(r"\d+ frames in [\d.]+ s: ")  # the final summary (periodic ones start "INFO ...")
_STATS_DROPS = re.compile(r"dropped: (.*); audio [\d.]+ s vs video [\d.]+ s \(drift ([-\d.]+) ms\); "
                          r"silence filled ([\d.]+) s")


class StderrReader(threading.Thread):
    """Keeps the stream's stderr (to a log file) and parses its periodic stats lines."""

    def __init__(self, stream, log_path: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.log_path = log_path
        self.t0 = t0
        self.points: list[StatsPoint] = []
        self.started_at: float | None = None  # the pipeline's first log line ("audio lookahead")
        self.ended_at: float | None = None  # the final report's first line (teardown follows)
        self.tail: list[str] = []

    def run(self) -> None:
        head: tuple[float, int, float, float] | None = None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.stream:
                log.write(line)
                self.tail = (self.tail + [line.rstrip()])[-40:]
                t = time.monotonic() - self.t0
                if self.started_at is None and "audio lookahead" in line:
                    self.started_at = t
                if self.ended_at is None and _FINAL.match(line):
                    self.ended_at = t
                m = _STATS_HEAD.search(line)
                if m:
                    head = (t, int(m.group(1)), float(m.group(2)), float(m.group(3)))
                    continue
                m = _STATS_DROPS.search(line)
                if m and head is not None:
                    drops = {} if m.group(1) == "none" else {
                        k: int(v) for k, v in (item.rsplit(" ", 1) for item in m.group(1).split(", "))}
                    self.points.append(StatsPoint(round(head[0], 2), head[1], head[2], head[3], drops,
                                                  float(m.group(2)), float(m.group(3))))
                    head = None


# --------------------------------------------------------------------------- summary


def slope_per_min(ts: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over ts (seconds), per minute; None with fewer than 3 points."""
    if len(ts) < 3:
        return None
    t = np.asarray(ts) / 60.0
    return float(np.polyfit(t, np.asarray(ys, dtype=float), 1)[0])


def summarise(samples: list[Sample], start_s: float, end_s: float, warmup_s: float) -> dict:
    """Statistics of the samples in the steady state: from ``warmup_s`` after the stream started
    (model built, first frames out) to the stream's end (before its teardown)."""
    steady = [s for s in samples if start_s + warmup_s <= s.t_s <= end_s]
    out: dict = {"samples": len(samples), "steady_samples": len(steady),
                 "steady_from_s": round(start_s + warmup_s, 1), "steady_to_s": round(end_s, 1)}
    for key in ("rss_mb", "fds", "threads"):
        ys = [getattr(s, key) for s in steady]
        if not ys:
            continue
        slope = slope_per_min([s.t_s for s in steady], ys)
        half = len(ys) // 2
        out[key] = {"first": ys[0], "last": ys[-1], "min": min(ys), "max": max(ys),
                    "slope_per_min": None if slope is None else round(slope, 3) + 0.0,  # no -0.0
                    "mean_first_half": round(float(np.mean(ys[:half])), 2) if half else None,
                    "mean_second_half": round(float(np.mean(ys[half:])), 2) if half else None}
    out["rss_mb_peak_whole_run"] = max((s.rss_mb for s in samples), default=None)
    out["load1_mean"] = round(float(np.mean([s.load1 for s in samples])), 2) if samples else None
    return out


def markdown(r: dict) -> str:
    from trtalk.bench.report import _machine_line

    s, rep = r["summary"], r["report"] or {}
    rss, fds, thr = s.get("rss_mb", {}), s.get("fds", {}), s.get("threads", {})
    minutes = r["params"]["minutes"]
    note = "" if minutes >= 10 else (f" (**{minutes:g} minutes**, not the default 10: a shorter run "
                                     "for the session's time budget)")
    L = [f"# Soak: `trtalk stream` on a real-time clock for {minutes:g} min{note}", "",
         f"Command: `{r['command']}`", "",
         f"Made by: `{r['script_command']}` at commit {r.get('git_commit') or 'unknown'}", "",
         f"Machine: {_machine_line(r['machine'])}; load average (1 min) during the run "
         f"{s.get('load1_mean')} on {os.cpu_count()} CPUs (shared machine)", "",
         f"Inputs: {r['inputs']}", "",
         f"Exit status {r['returncode']}; stream ran {r['stream_seconds']:.0f} s after "
         f"{r['startup_s']:.1f} s of start-up; sampled every {r['params']['interval']:g} s from "
         f"outside (psutil: RSS, open fds, threads); the steady state is from "
         f"{r['params']['warmup']:g} s after the stream started to its end "
         f"(t = {s['steady_from_s']} to {s['steady_to_s']} s).", "",
         "| | first | last | min | max | slope per min | mean 1st half | mean 2nd half |",
         "|---|---|---|---|---|---|---|---|"]
    for label, d in (("RSS (MB)", rss), ("open fds", fds), ("threads", thr)):
        if d:
            slope = None if d["slope_per_min"] is None else d["slope_per_min"] + 0.0
            L.append(f"| {label} | {d['first']} | {d['last']} | {d['min']} | {d['max']} | "
                     f"{slope} | {d['mean_first_half']} | {d['mean_second_half']} |")
    L += ["", f"**RSS slope: {rss.get('slope_per_min')} MB/min** over {s.get('steady_samples')} samples "
              f"(peak RSS over the whole run {s.get('rss_mb_peak_whole_run')} MB).", ""]
    if rep:
        L += [f"Stream report: {rep.get('frames')} frames, {rep.get('fps_achieved', 0):.2f} fps achieved "
              f"(target {rep.get('fps_target')}); dropped {rep.get('frames_dropped')} "
              f"({', '.join(f'{k} {v}' for k, v in (rep.get('drops') or {}).items() if v) or 'none'}); "
              f"audio/video drift at the end {rep.get('av_drift_ms')} ms; silence filled "
              f"{rep.get('audio_silence_s')} s; compute {rep.get('compute_ms_per_frame') or 0:.1f} ms/frame; "
              f"mic->frame p50/p99 {rep['mic_to_frame_ms'].get('p50')}/{rep['mic_to_frame_ms'].get('p99')} ms.", ""]
    pts = r["stats_series"]
    if pts:
        L += ["Drift and drops over time (the stream's `--stats` lines, cumulative):", "",
              "| t (s) | frames | fps | drops (late frames + queue overflows) | drift ms |",
              "|---|---|---|---|---|"]
        step = max(1, len(pts) // 12)
        for p in pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else []):
            L.append(f"| {p['t_s']:.0f} | {p['frames']} | {p['fps']:.2f} | {sum(p['dropped'].values())} | "
                     f"{p['drift_ms']:.1f} |")
        L.append("")
    step = max(1, len(r["samples"]) // 16)
    L += [f"Samples (one row in {step}; all of them in the JSON):", "",
          "| t (s) | RSS MB | fds | threads | load1 |", "|---|---|---|---|---|"]
    for smp in r["samples"][::step]:
        L.append(f"| {smp['t_s']:.0f} | {smp['rss_mb']} | {smp['fds']} | {smp['threads']} | {smp['load1']} |")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main


def git_commit() -> str | None:
    """HEAD of the tree that ran (``+dirty`` with uncommitted changes outside benchmarks/results),
    None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        # Result files (this script's own output) do not make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.markdown_from is not None:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        return 0
    from trtalk.bench.peaks import machine_info

    seconds = args.minutes * 60.0
    name = args.name or f"soak_{args.model}{'_small' if args.model == 'pcavs' else ''}_{args.minutes:g}min"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trtalk-soak-") as tmp_:
        tmp = Path(tmp_)
        speech = tmp / "speech_long.wav"
        write_long_speech(speech, seconds + 5.0)
        cmd = ["stream", "--audio", str(speech), "--realtime", "--duration", f"{seconds:g}",
               "--stats", "5", "--stats-json", str(tmp / "stats.json")]
        inputs = f"speech: the built-in clip repeated to {seconds + 5:.0f} s; "
        if args.pose == "video":
            write_pose_video(tmp / "pose.mp4")
            cmd += ["--pose", str(tmp / "pose.mp4")]
            inputs += "pose: a 4 s head-motion video of the built-in photo (rotation +-8 deg), looped; "
        else:
            cmd += ["--pose-static"]
            inputs += "pose: static; "
        cmd += ["--record", str(tmp / "soak.mp4")] if args.record else ["--sink", "null"]
        inputs += "sink: mp4 recording" if args.record else "sink: null"
        cmd += ["--model", args.model] + (["--model-config", "small"] if args.model == "pcavs" else [])
        cmd += args.extra
        full = [args.python, "-m", "trtalk.cli", *cmd]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        print(f"soak: {shlex.join(full)}", file=sys.stderr)
        t0 = time.monotonic()
        proc = subprocess.Popen(full, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env, cwd=tmp)
        reader = StderrReader(proc.stderr, tmp / "stream.log", t0)
        reader.start()
        samples: list[Sample] = []
        limit = seconds + 300.0  # start-up (model build) and finalising included
        next_t = 0.0
        while proc.poll() is None:
            t = time.monotonic() - t0
            if t > limit:
                proc.terminate()
                break
            if t >= next_t:
                smp = proc_sample(proc.pid, t)
                if smp is not None:
                    samples.append(smp)
                    if len(samples) % 12 == 1:
                        print(f"  t {smp.t_s:6.0f} s  RSS {smp.rss_mb:7.1f} MB  fds {smp.fds}  "
                              f"threads {smp.threads}  load {smp.load1}", file=sys.stderr)
                next_t += args.interval
            time.sleep(min(0.2, max(0.0, next_t - t)))
        rc = proc.wait()
        ended = time.monotonic() - t0
        reader.join(timeout=10)
        stats_path = tmp / "stats.json"
        report = json.loads(stats_path.read_text()) if stats_path.exists() else None
        if rc != 0:
            print("\n".join(reader.tail), file=sys.stderr)
    start_s = reader.started_at if reader.started_at is not None else 0.0
    end_s = reader.ended_at if reader.ended_at is not None else ended
    result = {
        "command": "trtalk " + shlex.join(cmd).replace(str(tmp), "$TMP"),
        "script_command": shlex.join(["scripts/soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "params": {"minutes": args.minutes, "model": args.model, "pose": args.pose, "record": args.record,
                   "interval": args.interval, "warmup": args.warmup},
        "inputs": inputs,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)},
        "git_commit": git_commit(),
        "machine": machine_info("cpu"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "returncode": rc,
        "startup_s": round(start_s, 2),
        "stream_seconds": round(end_s - start_s, 1),
        "summary": summarise(samples, start_s, end_s, args.warmup),
        "report": report,
        "stats_series": [asdict(p) for p in reader.points],
        "samples": [asdict(s) for s in samples],
    }
    json_path, md_path = args.out / f"{name}.json", args.out / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(markdown(result))
    rss = result["summary"].get("rss_mb", {})
    print(f"soak: exit {rc}; RSS {rss.get('first')} -> {rss.get('last')} MB, slope "
          f"{rss.get('slope_per_min')} MB/min; fds {result['summary'].get('fds', {}).get('last')}; "
          f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
