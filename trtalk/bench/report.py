"""Write a bench result: results.json, results.md and PNG plots (matplotlib, Agg), atomically.

Every file records the machine and the exact command. Plots:

- ``latency_vs_batch.png``: generator and whole-frame p50 latency against batch, one line per
  available backend (log-log).
- ``frame_breakdown_b<batch>.png``: per-stage stacked bars of a frame per backend at the smallest
  batch (pose, audio, generator; identity is once per avatar and shown hatched beside it).

``stream.json`` / ``stream.md`` hold the streaming measure (`trtalk bench --stream`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGE_COLOURS = {"pose": "#4C72B0", "audio": "#DD8452", "generator": "#55A868", "identity": "#C0C0C0"}


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _machine_line(m: dict[str, Any]) -> str:
    gpu = f"{m['gpu']} ({m['gpu_capability']}, driver {m['nvidia_driver']}, CUDA {m['cuda']})" if m.get("gpu") \
        else "none"
    libs = ", ".join(f"{k} {m[k]}" for k in ("trtalk", "torch", "onnxruntime", "tensorrt", "tensorrt_rtx",
                                                "numpy", "matplotlib") if m.get(k))
    ghz = f"{m['cpu_ghz']:.2f} GHz" if isinstance(m.get("cpu_ghz"), (int, float)) else "clock unknown"
    return (f"CPU {m['cpu']} ({m['cpu_cores']} cores usable, {ghz}, SIMD "
            f"{'/'.join(m['cpu_simd']) or '-'}, torch threads {m['torch_threads']}); GPU {gpu}; "
            f"device `{m['device']}`; {libs}; {m['platform']}")


def markdown(r: dict[str, Any]) -> str:
    """The human-readable report of a `run_bench` result."""
    L: list[str] = ["# trtalk bench", "", f"Command: `{r['command']}`", "",
                    f"Machine: {_machine_line(r['machine'])}", "",
                    f"Model: {r['config']['model_config']}; weights: {r['config']['weights']}; "
                    f"warm-up {r['config']['warmup']}, {r['config']['iters']} timed iterations per "
                    f"backend and batch; wall time {r['wall_s']} s.", "",
                    f"Frame: {r['frame_definition']}.", ""]
    # FLOPs
    L += ["## FLOPs per frame (counted, batch 1)", "", f"Method: {r['flops_method']}.", "",
          "| stage | GFLOP | reference GFLOP (PC-AVS) | difference | verdict |", "|---|---|---|---|---|"]
    for s, c in r["flops_vs_design"].items():
        rel = "-" if c["rel_diff"] is None else f"{100 * c['rel_diff']:+.1f}%"
        L.append(f"| {s} | {c['gflop']:.3f} | {_fmt(c['design_gflop'])} | {rel} | {c['verdict']} |")
    L += [f"| frame (pose+audio+generator) | {r['flops_frame'] / 1e9:.3f} | | | |", ""]
    thr = r["config"].get("threads")
    if thr is not None and not r["machine"].get("gpu") and thr < r["machine"]["cpu_cores"]:
        L += [f"Note: run with --threads {thr} on {r['machine']['cpu_cores']} cores; fractions are of the "
              f"whole machine's estimated peak, of which {thr} thread(s) can use about "
              f"{thr / r['machine']['cpu_cores']:.0%} (more when the boost clock exceeds the clock /proc "
              f"reports, which is why a row can pass that share).", ""]
    L += ["Peaks: " + "; ".join(f"{p}: {('%.1f TFLOP/s' % (v['flops'] / 1e12)) if v['flops'] else 'n/a'} "
                                 f"({v['basis']})" for p, v in r["peaks"].items()), ""]
    # availability
    L += ["## Backends", "", "| backend | precision | device | status |", "|---|---|---|---|"]
    for run in r["runs"]:
        status = "ran" if run["available"] else f"**not run**: {run['reason']}"
        if run["notes"]:
            status += " (" + "; ".join(run["notes"]) + ")"
        L.append(f"| {run['label']} | {run['precision']} | {run['device']} | {status} |")
    L.append("")
    # latency table
    L += ["## Latency (ms, p50 / p90 / p99) and throughput", "",
          "| backend | batch | identity (once/avatar) | pose | audio | generator | **frame** | frames/s | "
          "frame TFLOP/s | frame % of peak | generator % of peak | memory MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        if not run["available"]:
            continue
        for row in run["batches"]:
            ms = row["ms"]
            cell = {s: f"{_fmt(ms[s]['p50'])} / {_fmt(ms[s]['p90'])} / {_fmt(ms[s]['p99'])}"
                    for s in ("identity", "pose", "audio", "generator", "frame")}
            fr = row["fraction_of_peak"]
            pct = {k: (f"{100 * fr[k]:.2f}%" if fr.get(k) is not None else "-") for k in ("frame", "generator")}
            mem = (_mib(row["memory"]["torch_peak_bytes"]) + " (torch)") if "memory" in row else \
                (_mib(run["host_memory"]["peak_rss_bytes"]) + " (RSS)")
            L.append(f"| {run['label']} | {row['batch']} | {cell['identity']} | {cell['pose']} | {cell['audio']} | "
                     f"{cell['generator']} | **{cell['frame']}** | {_fmt(row['frames_per_s'])} | "
                     f"{_fmt(row['achieved_tflops']['frame'])} | {pct['frame']} | {pct['generator']} | {mem} |")
    L += ["", "Memory: " + "; ".join(sorted({run["host_memory"]["kind"] for run in r["runs"] if run["available"]}))
          + ". CUDA rows: torch.cuda.max_memory_allocated (torch's allocator only).", ""]
    # speed-ups
    sp = r.get("speedup_vs_torch_ref_p50") or {}
    if sp:
        L += ["## Speed-up over torch-ref (p50 ratio, higher is faster)", "",
              "| backend | batch | identity | pose | audio | generator | frame |", "|---|---|---|---|---|---|---|"]
        for label, rows in sp.items():
            for batch, v in rows.items():
                L.append(f"| {label} | {batch} | " + " | ".join(f"{v[s]:.2f}x" for s in
                                                               ("identity", "pose", "audio", "generator", "frame")) + " |")
        L.append("")
    # targets: only on the device they are set for
    t = r["targets"]
    if targets_apply(r):
        L += [f"## Targets ({t['device']})", "", "| target | goal | best here | backend |", "|---|---|---|---|"]
        for item in t["items"]:
            b = r["best"].get(item["metric"])
            unit = {"generator_ms_b1": " ms", "frame_ms_b1": " ms", "speedup_b1": "x", "fps_b64": " frames/s"}
            val = "not measured (batch not run)" if b is None else _fmt(b["value"]) + unit.get(item["metric"], "")
            L.append(f"| {item['what']} | {item['target']} | {val} | {b['backend'] if b else '-'} |")
    L += ["", "Plots: `latency_vs_batch.png`, `frame_breakdown_b*.png`.", ""]
    return "\n".join(L)


def targets_apply(r: dict[str, Any]) -> bool:
    """Whether the run's device is the one the targets are set for (their section is left out
    of other machines' reports: a CPU's numbers against H100 goals say nothing)."""
    t = r["targets"]
    gpu = r["machine"].get("gpu") or ""
    wanted = t["device"].split(",")[0].strip()
    return bool(t.get("measured_here")) and wanted.lower() in gpu.lower()


def _legend_outside(ax: Any) -> None:
    """The legend right of the plot, clear of every bar and line (tight_layout makes room)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _plot_latency(r: dict[str, Any], path: Path) -> None:
    _save(latency_figure(r), path)


def latency_figure(r: dict[str, Any]) -> Any:
    """The figure of ``latency_vs_batch.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, stage in zip(axes, ("generator", "frame")):
        for run in r["runs"]:
            if not run["available"] or not run["batches"]:
                continue
            xs = [row["batch"] for row in run["batches"]]
            ys = [row["ms"][stage]["p50"] for row in run["batches"]]
            ax.plot(xs, ys, marker="o", label=run["label"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (frames per call)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{stage}" + (" (pose + audio + generator)" if stage == "frame" else ""))
        ax.grid(True, which="both", alpha=0.3)
        _legend_outside(ax)
    m = r["machine"]
    fig.suptitle(f"trtalk bench on {m['gpu'] or m['cpu']} ({r['config']['model_config']} model)", fontsize=10)
    fig.text(0.01, 0.01, r["command"][:160], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return fig


def _plot_breakdown(r: dict[str, Any], path: Path, batch: int) -> None:
    _save(breakdown_figure(r, batch), path)


def breakdown_figure(r: dict[str, Any], batch: int) -> Any:
    """The figure of ``frame_breakdown_b<batch>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in r["runs"] if run["available"] and any(b["batch"] == batch for b in run["batches"])]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(runs) + 2) + 2.8, 4.5))
    for i, run in enumerate(runs):
        row = next(b for b in run["batches"] if b["batch"] == batch)
        bottom = 0.0
        for s in ("pose", "audio", "generator"):
            v = row["ms"][s]["p50"]
            ax.bar(i - 0.18, v, 0.34, bottom=bottom, color=STAGE_COLOURS[s], label=s if i == 0 else None)
            bottom += v
        ax.bar(i + 0.18, row["ms"]["identity"]["p50"], 0.34, color=STAGE_COLOURS["identity"], hatch="//",
               label="identity (once per avatar, not in frame)" if i == 0 else None)
    ax.set_xticks(range(len(runs)), [run["label"] for run in runs], rotation=20, fontsize=8)
    ax.set_ylabel("p50 latency (ms)")  # linear: stacked segments are only honest on a linear axis
    ax.set_title(f"Per-stage breakdown of a frame, batch {batch}", fontsize=10)
    _legend_outside(ax)
    fig.text(0.01, 0.01, r["command"][:160], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def write_report(r: dict[str, Any], out: Path) -> list[Path]:
    """Write results.json, results.md and the plots into ``out`` (created); returns the paths."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    paths = [out / "results.json", out / "results.md", out / "latency_vs_batch.png"]
    _write_text(paths[0], json.dumps(r, indent=1, sort_keys=False) + "\n")
    _write_text(paths[1], markdown(r))
    _plot_latency(r, paths[2])
    batches = sorted({b["batch"] for run in r["runs"] for b in run["batches"]})
    if batches:
        p = out / f"frame_breakdown_b{batches[0]}.png"
        _plot_breakdown(r, p, batches[0])
        paths.append(p)
    return paths


def stream_markdown(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    mic = lat["mic_to_frame (compute + queueing)"]
    sp = lat["speech_to_frame (lookahead + compute + queueing)"]
    look = lat["algorithmic_lookahead"]
    c = s["config"]
    return "\n".join([
        "# trtalk bench --stream", "", f"Command: `{s['command']}`", "",
        f"Machine: {_machine_line(s['machine'])}", "",
        f"Runtime: trtalk.runtime.stream on a real-time clock; backend {c['backend']} on {c['device']}, "
        f"{c['model_config']} model, batch <= {c['batch']}, {c['fps']} fps, {c['duration_s']} s. Inputs: "
        f"avatar {s['inputs']['avatar']}, audio {s['inputs']['audio']}, pose: {s['inputs']['pose']}.", "",
        "| part | p50 ms | p99 ms |", "|---|---|---|",
        f"| algorithmic lookahead (audio window end past the frame time) | {look['p50']} | {look['p99']} |",
        f"| mic -> frame (compute + queueing after the last needed sample) | {mic['p50']} | {mic['p99']} |",
        f"| speech -> frame (lookahead + compute + queueing) | {sp['p50']} | {sp['p99']} |",
        f"| compute per frame (mean) | {lat['compute_per_frame']} | |",
        f"| queueing (estimate: mic->frame p50 - compute per frame) | {lat['queueing_p50_estimate']} | |", "",
        f"fps achieved {s['fps']} (target {c['fps']}); frames {s['frames']}, dropped {s['frames_dropped']}; "
        f"lookahead by formula {1000 * s['lookahead_s']:.0f} ms (trtalk.audio.audio_lookahead_s).", ""])


def write_stream_report(s: dict[str, Any], out: Path) -> list[Path]:
    """Write stream.json and stream.md into ``out`` (created)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    paths = [out / "stream.json", out / "stream.md"]
    _write_text(paths[0], json.dumps(s, indent=1) + "\n")
    _write_text(paths[1], stream_markdown(s))
    return paths
