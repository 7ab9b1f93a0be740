"""Hostile-user hardening (issue 12): untrusted checkpoint metadata, bounds on work, signals,
self-healing caches, truncated media, messages, optional extras. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trtalk.cli import main
from trtalk.errors import TrtalkError
from trtalk.families.pcavs.model import PCAVSConfig

ROOT = Path(__file__).resolve().parent.parent


def _one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line starting with 'trtalk: error:'."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("trtalk: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


# --------------------------------------------------------------------- 1. checkpoint metadata


def _safetensors_with(path: Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    save_file({"G.x": torch.zeros(2)}, str(path), metadata=meta)
    return path


def _meta(config: object, **extra: str) -> dict:
    text = config if isinstance(config, str) else json.dumps(config)
    return {"format": "trtalk.pcavs", "format_version": "1", "config": text,
            "trtalk_version": "0.1.0", **extra}


def _small_dict() -> dict:
    return json.loads(PCAVSConfig.small().to_json())


def _huge_channels() -> dict:
    d = _small_dict()
    d["gen_channels"] = {k: 4096 for k in d["gen_channels"]}
    d["gen_channels"]["7"] = 512
    return d


@pytest.mark.parametrize("meta, match", [
    ({"format": "trtalk.pcavs", "format_version": "1"}, "has no 'config' metadata"),
    (_meta("{not json"), "config is not valid JSON"),
    (_meta(dict(_small_dict(), bogus_option=1), trtalk_version="9.9"),
     r"unknown config key .bogus_option. \(made by trtalk 9.9, this is trtalk"),
    (_meta(dict(_small_dict(), gen_channels={"7": 512, "14": 3_000_000_000, "28": 1, "56": 1,
                                             "112": 1, "224": 1})),
     r"gen_channels\[14\] 3000000000 is out of range \[1, 4096\]"),
    (_meta(_huge_channels()), "GiB model, more than the 2 GiB bound"),
    (_meta(dict(_small_dict(), pose_dim=13)), "style_dim must equal"),
    (_meta(dict(_small_dict(), num_classes="5830")), "num_classes must be an integer"),
    (_meta([1, 2]), "config must be a JSON object"),
    (_meta(dict(_small_dict(), gen_channels={"7": 512})), "lacks resolution 14"),
    (_meta(_small_dict(), format_version="7"), r"format version 7 is newer than 1 \(made by trtalk"),
])
def test_bad_checkpoint_metadata_is_a_one_line_error(tmp_path, capsys, meta, match):
    import re

    src = _safetensors_with(tmp_path / "bad.safetensors", meta)
    line = _one_line_error(["convert", str(src), "-o", str(tmp_path / "out.safetensors")], capsys)
    assert re.search(match, line), line
    assert not (tmp_path / "out.safetensors").exists()


def test_config_schema_round_trip_and_sizes():
    for cfg in (PCAVSConfig(), PCAVSConfig.small()):
        assert PCAVSConfig.from_json(cfg.to_json()) == cfg
    # Counted on the meta device: the official networks are 0.57 GiB of float32.
    assert 0.5 < PCAVSConfig().model_bytes() / 2 ** 30 < 0.6


# --------------------------------------------------------------------- 2. bounds on work


@pytest.mark.parametrize("argv, match", [
    (["render", "--fps", "1e9"], "--fps 1e\\+09 is out of range: it must be between 0.1 and 240"),
    (["render", "--batch", "100000"], "--batch 100000 is out of range: it must be between 1 and 256"),
    (["stream", "--audio", "x.wav", "--batch", "0"], "--batch 0 is out of range"),
    (["render", "--duration", "1e9"], "--duration 1e\\+09 is out of range: it must be between 0.001 and 86400"),
    (["export", "--out", "never", "--max-batch", "5000"], "--max-batch 5000 is out of range: it must be between 1 and 1024"),
    (["bench", "--batch", "1,100000"], "--batch 100000 is out of range: it must be between 1 and 256"),
])
def test_options_that_scale_work_are_bounded(tmp_path, capsys, monkeypatch, argv, match):
    import re

    monkeypatch.chdir(tmp_path)
    line = _one_line_error(argv + (["-o", str(tmp_path / "o.mp4")] if argv[0] == "render" else []),
                           capsys)
    assert re.search(match, line), line
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder created


def test_render_estimates_memory_before_it_starts(tmp_path, capsys, monkeypatch, pose_video_path):
    from trtalk.runtime.render import RenderConfig, estimate_memory

    cfg = RenderConfig(face=pose_video_path, paste_back=True, output=tmp_path / "o.mp4")
    parts = estimate_memory(cfg)
    # 50 frames of 256x256 RGB kept for paste-back, and 50 aligned 224x224 crops.
    assert parts["face frames (paste-back)"] == 50 * 256 * 256 * 3
    assert parts["face clip"] > 50 * 224 * 224 * 3
    monkeypatch.setenv("TRTALK_MEMORY_LIMIT_MB", "5")
    line = _one_line_error(["render", "--face", str(pose_video_path), "--paste-back",
                            "-o", str(tmp_path / "sub" / "o.mp4")], capsys)
    assert "GiB in memory (face frames (paste-back)" in line and "TRTALK_MEMORY_LIMIT_MB" in line
    assert list(tmp_path.iterdir()) == []  # the folder it created is gone again


# --------------------------------------------------------------------- 3. signals, stale temps


def test_on_signals_turns_sigterm_into_the_sigint_path():
    import threading

    from trtalk.signals import Interrupted, on_signals

    with pytest.raises(KeyboardInterrupt) as info:
        with on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert isinstance(info.value, Interrupted) and info.value.exit_code == 143
    stop = threading.Event()
    with pytest.raises(Interrupted):
        with on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)  # first: sets the event
            time.sleep(0.2)
            assert stop.is_set()
            os.kill(os.getpid(), signal.SIGINT)  # second: aborts
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def _swallowing_library_call(signum: int) -> None:
    """What PyAV's ``err_check`` did in CI: the signal's exception is raised inside it and lost."""
    try:
        os.kill(os.getpid(), signum)
        time.sleep(1)
    except KeyboardInterrupt:
        pass


@pytest.mark.parametrize("live", [False, True], ids=["batch", "live"])
def test_signal_whose_exception_a_library_swallows_still_discards_output(tmp_path, live):
    """A render got SIGINT while PyAV ran, PyAV dropped the KeyboardInterrupt, and the render saved
    its mp4 with exit 0. The signal is recorded: the commit refuses and the command ends 130 / 143;
    a live recording (which a signal ends, not discards) is still kept."""
    from trtalk.fsutil import atomic_output
    from trtalk.media.mp4 import Mp4Sink
    from trtalk.signals import Interrupted, on_signals

    out = tmp_path / "x.mp4"
    with pytest.raises(Interrupted) as info:
        with on_signals():
            with Mp4Sink(out, fps=25, push_audio=live, live=live) as sink:
                sink.write(np.zeros((64, 64, 3), np.uint8), 0.0)
                _swallowing_library_call(signal.SIGINT)
                if not live:  # a batch encode stops at its next frame, not only at the commit
                    with pytest.raises(Interrupted):
                        sink.write(np.zeros((64, 64, 3), np.uint8), 0.04)
    assert info.value.exit_code == 130
    assert out.exists() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == (["x.mp4"] if live else [])

    with pytest.raises(Interrupted) as info:
        with on_signals():
            with atomic_output(tmp_path / "y.bin") as tmp:
                tmp.write_bytes(b"data")
                _swallowing_library_call(signal.SIGTERM)
    assert info.value.exit_code == 143 and not (tmp_path / "y.bin").exists()

    with on_signals():  # a fresh block starts clean: the old signal does not leak into it
        with atomic_output(tmp_path / "z.bin") as tmp:
            tmp.write_bytes(b"data")
    assert (tmp_path / "z.bin").read_bytes() == b"data"


def test_stale_temp_files_of_the_same_output_are_removed(tmp_path):
    from trtalk.fsutil import STALE_AFTER_S, atomic_output, remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".out.0123abcd-{dead.pid}.tmp.mp4",  # its writer is gone
        "alive": f".out.0123abce-{os.getpid()}.tmp.mp4",  # a run in progress
        "old": ".out.0123abcf.tmp.mp4",  # older format, no pid: by age
        "young": ".out.0123abc0.tmp.mp4",
        "other": f".other.0123abcd-{dead.pid}.tmp.mp4",  # another output's
        "user": "out.0123abcd.tmp.mp4",  # not our pattern
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"x")
    old = time.time() - STALE_AFTER_S - 10
    os.utime(tmp_path / names["old"], (old, old))
    removed = {p.name for p in remove_stale_temps(tmp_path / "out.mp4")}
    assert removed == {names["dead"], names["old"]}
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names[k] for k in ("alive", "young", "other", "user")}
    with atomic_output(tmp_path / "other.mp4") as tmp:  # every writer cleans up on start
        assert str(os.getpid()) in tmp.name
        tmp.write_bytes(b"y")
    assert names["other"] not in {p.name for p in tmp_path.iterdir()}


def test_sigterm_during_render_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "trtalk.cli", "render", "--fps", "100",
                             "-o", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.parent.is_dir() and any(p.name.endswith(".tmp.mp4") for p in out.parent.iterdir()):
                break  # the mp4 writer is open: mid-render
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last == "trtalk: interrupted (SIGTERM); unfinished output was discarded", err[-2000:]
    assert "Traceback" not in err
    assert not out.parent.exists()  # no temp file, no output, and the folder it made is gone


# --------------------------------------------------------------------- 5. caches heal


def test_corrupt_cached_export_is_set_aside_and_rebuilt(tmp_path, monkeypatch, caplog):
    import logging

    import trtalk.export.exporter as exporter
    from trtalk.engine.runner import ensure_export
    from trtalk.export.manifest import Manifest
    from trtalk.export.onnx_export import GraphRecord, sha256_file
    from trtalk.export.stages import STAGES

    calls = []

    def fake_export(opts, model=None, checkpoint_record=None):  # the real one takes a minute
        out = Path(opts.out)
        out.mkdir(parents=True)
        m = Manifest(checkpoint_record, {}, {"precision": opts.precision, "max_batch": opts.max_batch}, {})
        for s in STAGES:
            f = out / f"{s}.onnx"
            f.write_bytes(s.encode() * 100)
            m.graphs[s] = GraphRecord(s, f.name, sha256_file(f), f.stat().st_size, [], [])
        m.write(out)
        calls.append(out)
        return m

    monkeypatch.setattr(exporter, "export_pcavs", fake_export)
    args = (None, "fp32", 4, tmp_path, PCAVSConfig.small())
    first = ensure_export(*args)
    assert ensure_export(*args) == first and len(calls) == 1  # a cache hit
    (first / "audio.onnx").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="trtalk.engine.runner"):
        again = ensure_export(*args)
    assert again == first and len(calls) == 2  # rebuilt in place: no dead end
    assert "is unusable" in caplog.text and "re-exporting" in caplog.text
    aside = [p for p in first.parent.iterdir() if p.name.startswith(first.name + ".corrupt-")]
    assert len(aside) == 1 and (aside[0] / "audio.onnx").read_bytes() == b"truncated"
    Manifest.read(again).verify(again)
    (first / "manifest.json").write_text("{broken")  # an unreadable manifest heals the same way
    assert ensure_export(*args) == first and len(calls) == 3


def test_corrupt_cached_engine_is_kept_aside(tmp_path):
    from trtalk.export.cache import EngineCache
    from trtalk.export.engine_file import EngineKey, check_engine

    key = EngineKey(graph_sha256="ab" * 32, precision="fp16", flavour="tensorrt-rtx",
                    trt_version="1.7", compute_capability="sm89", max_batch=8, opt_batch=4)
    cache, calls = EngineCache(tmp_path), []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        tmp.write_bytes(b"ENGINE" * 100)
        return {"io": []}

    rec = cache.get_or_build("pose", key, build)
    rec.path.write_bytes(b"ENG")
    again = cache.get_or_build("pose", key, build)
    assert len(calls) == 2 and check_engine(again.path, key)[0]
    aside = sorted(p.name for p in rec.path.parent.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 2 and aside[0].startswith(rec.path.name + ".corrupt-")  # engine + sidecar


# --------------------------------------------------------------------- 7. messages


class _Evil:
    def __reduce__(self):
        return (print, ("EXECUTED",))


@pytest.mark.parametrize("legacy", [False, True])
def test_refused_pickle_is_one_complete_line_without_torch_warnings(tmp_path, legacy):
    folder = tmp_path / "ck"
    folder.mkdir()
    for name in ("G", "V", "E", "A_sync"):
        torch.save({"w": _Evil()}, folder / f"latest_net_{name}.pth",
                   _use_new_zipfile_serialization=not legacy)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    res = subprocess.run([sys.executable, "-m", "trtalk.cli", "convert", str(folder), "-o",
                          str(tmp_path / "x.safetensors")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Warning" not in res.stderr and "EXECUTED" not in res.stdout, res.stderr
    assert lines[0].startswith("trtalk: error: refused ") and lines[0].endswith("latest_net_*.pth"), lines
    assert "never runs code" in lines[0]


def test_output_extension_is_checked_up_front(tmp_path, capsys):
    line = _one_line_error(["render", "-o", str(tmp_path / "x.gif")], capsys)
    assert "cannot write .gif; give a .mp4, .m4v, .mov, .mkv file name" in line
    line = _one_line_error(["stream", "--audio", str(ROOT / "trtalk/assets/demo_speech.wav"),
                            "--record", str(tmp_path / "x.avi")], capsys)
    assert "--record" in line and ".avi" in line
    assert list(tmp_path.iterdir()) == []


def test_mkv_and_mov_outputs_are_those_containers(tmp_path):
    import av

    from trtalk.media.mp4 import Mp4Sink

    for name, fmt in (("a.mkv", "matroska"), ("a.mov", "mov")):
        with Mp4Sink(tmp_path / name, fps=25, audio=np.zeros(16000, np.float32)) as sink:
            for _ in range(5):
                sink.write(np.zeros((32, 32, 3), np.uint8))
        with av.open(str(tmp_path / name)) as c:
            assert fmt in c.format.name
            assert c.streams.video[0].frames in (0, 5) and len(c.streams.audio) == 1


def test_missing_parent_folder_is_created_and_removed_on_failure(tmp_path, capsys):
    from safetensors.torch import save_file

    from trtalk.families.pcavs.checkpoint import FORMAT, NETWORKS
    from trtalk.families.pcavs.model import PCAVS

    # convert: a missing parent is created, as by render and stream --record ...
    small = PCAVS.random(0, PCAVSConfig.small())
    convert_src = tmp_path / "src.safetensors"
    tensors = {f"{n}.{k}": v.contiguous() for n in NETWORKS for k, v in small.network(n).state_dict().items()}
    save_file(tensors, str(convert_src), metadata={"format": FORMAT, "config": small.config.to_json()})
    assert main(["convert", str(convert_src), "-o", str(tmp_path / "a" / "b" / "m.safetensors")]) == 0
    assert (tmp_path / "a" / "b" / "m.safetensors").is_file()
    # ... and a failed run removes the folders it made (render -o tree, convert, export --out).
    _one_line_error(["render", "--face", str(tmp_path / "nope.png"), "-o", str(tmp_path / "r" / "s" / "o.mp4")],
                    capsys)
    _one_line_error(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "c" / "m.safetensors")], capsys)
    _one_line_error(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "e" / "f")], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "src.safetensors"]


def test_live_recording_stopped_before_the_first_frame_leaves_nothing(tmp_path):
    from trtalk.media.mp4 import Mp4Sink

    with pytest.raises(KeyboardInterrupt):
        with Mp4Sink(tmp_path / "rec.mp4", push_audio=True, live=True):
            raise KeyboardInterrupt  # Ctrl-C while the model loads: no "no frames were produced"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- 6. truncated media


def test_truncated_video_is_used_with_a_warning(tmp_path, caplog):
    import logging

    from trtalk.media.mp4 import Mp4Sink
    from trtalk.media.read import iter_frames

    rng = np.random.default_rng(0)
    full = tmp_path / "full.mp4"
    with Mp4Sink(full, fps=25) as sink:  # faststart: the frame count is in the header
        for _ in range(50):
            sink.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 4 // 10])
    with caplog.at_level(logging.WARNING, logger="trtalk.media.read"):
        assert sum(1 for _ in iter_frames(full)) == 50
        assert caplog.text == ""
        n = sum(1 for _ in iter_frames(cut))
    assert 0 < n < 50
    assert f"only {n} frame(s) of the 50 its container lists decoded" in caplog.text


def test_mediapipe_native_warnings_are_hidden(tmp_path):
    """Hidden by default (issue 23; -q before), errors still shown."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "q.mp4"
    res = subprocess.run([sys.executable, "-m", "trtalk.cli", "demo", "--duration", "0.2",
                          "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "W0000" not in res.stderr and "XNNPACK" not in res.stderr, res.stderr
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "trtalk.cli", "-q", "demo", "-o", str(tmp_path / "x.gif")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("trtalk: error: -o ")  # errors still show


def test_fast_mode_stats_say_the_wall_clock_rate():
    from trtalk.runtime.latency import FrameTiming, LatencyRecorder

    rec = LatencyRecorder(25.0, realtime=False)
    for k in range(5):  # virtual timeline: 25 fps; wall: ~20 ms per frame
        rec.add(FrameTiming(k, k / 25, k / 25 + 0.12, k / 25 + 0.12, None, k / 25 + 0.12))
        time.sleep(0.02)
    report = rec.report()
    assert report.fps_achieved == pytest.approx(25.0)  # the timeline's rate, as before
    assert 0.06 < report.wall_seconds < 1.0 and report.wall_fps < 60
    first = report.summary().splitlines()[0]
    assert first.startswith(f"5 frames in {report.wall_seconds:.2f} s wall time: {report.wall_fps:.2f} frames/s")
    assert "25.00 fps" not in first


def test_devices_tells_tensorrt_from_tensorrt_rtx(monkeypatch, capsys):
    import importlib.util

    from trtalk.runtime import devices

    real = importlib.util.find_spec
    present = {"tensorrt_rtx_bindings"}

    def fake(name, *a, **kw):
        if name in ("tensorrt", "tensorrt_rtx_bindings"):
            return object() if name in present else None
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    b = devices.list_backends()
    assert b["tensorrt"] is False and b["tensorrt_rtx"] is True


# --------------------------------------------------------------------- 9. optional extras

_BLOCK_EXTRAS = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"onnx", "onnxruntime", "onnxslim", "onnxscript", "tensorrt",
                                  "tensorrt_rtx", "tensorrt_rtx_bindings", "cuda", "pyvirtualcam",
                                  "librosa", "triton", "onnxruntime_extensions", "aiohttp", "aiortc",
                                  "playwright", "prometheus_client"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import trtalk.cli
sys.exit(trtalk.cli.main(sys.argv[1:]))
"""


def test_cli_works_without_the_optional_extras(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def run(*argv):
        return subprocess.run([sys.executable, "-c", _BLOCK_EXTRAS, *argv], env=env,
                              capture_output=True, text=True, timeout=300)

    res = run("--help")  # builds every subcommand's parser
    assert res.returncode == 0 and "export" in res.stdout, res.stderr
    res = run("export", "--out", str(tmp_path / "e"), "--model-config", "small")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().endswith("pip install 'trtalk[export]'"), res.stderr
    assert not (tmp_path / "e").exists()
    res = run("serve", "--port", "0")  # before any model is loaded
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().endswith("pip install 'trtalk[serve]'"), res.stderr


# --------------------------------------------------------------------- 11. --model-config


@pytest.mark.parametrize("command", ["render", "demo", "stream", "export"])
def test_model_config_is_a_visible_option(command, capsys):
    # issue 23: --help shows the common options; --help-all every one
    with pytest.raises(SystemExit):
        main([command, "--help-all"])
    out = capsys.readouterr().out
    assert "--model-config {official,small}" in out and "every network narrow" in " ".join(out.split())


def test_export_model_config_small_builds_the_small_networks(monkeypatch, tmp_path):
    import trtalk.export.exporter as exporter

    seen = []

    def load_model(checkpoint, seed=0, config=None, family=None):
        seen.append(config)
        assert family == "pcavs"  # --model's default
        raise TrtalkError("stop here")  # the graphs themselves are test_export's business

    monkeypatch.setattr(exporter, "load_model", load_model)
    for name, want in (("small", PCAVSConfig.small()), ("official", None)):
        with pytest.raises(TrtalkError, match="stop here"):
            exporter.export_pcavs(exporter.ExportOptions(out=tmp_path / "e", model_config=name))
        assert seen[-1] == want
    assert not (tmp_path / "e").exists()
    with pytest.raises(TrtalkError, match="drop --checkpoint"):
        exporter.ExportOptions(out=tmp_path / "e", model_config="small", checkpoint=tmp_path).validate()


def test_bad_device_is_a_one_line_error(tmp_path, capsys):
    for command in (["render", "-o", str(tmp_path / "o.mp4")], ["stream", "--audio",
                                                               str(ROOT / "trtalk/assets/demo_speech.wav")]):
        line = _one_line_error(command + ["--device", "banana"], capsys)
        assert "--device 'banana': use cpu, cuda or cuda:N" in line
    assert list(tmp_path.iterdir()) == []


def test_stream_record_stopped_before_the_first_frame_says_so(tmp_path, capsys, monkeypatch):
    from trtalk.runtime.stream import StreamPipeline

    def stopped_at_once(self, stop=None, progress=None):
        stop.set()  # Ctrl-C / SIGTERM while the sources start
        return self.report()

    monkeypatch.setattr(StreamPipeline, "run", stopped_at_once)
    rec = tmp_path / "new" / "rec.mp4"
    capsys.readouterr()
    assert main(["stream", "--audio", str(ROOT / "trtalk/assets/demo_speech.wav"), "--record", str(rec)]) == 130
    err = capsys.readouterr().err
    assert "stopped before the first frame; nothing was recorded" in err
    assert "no frames were produced" not in err
    assert list(tmp_path.iterdir()) == []  # no file, no temp file, no folder


# ------------------------------------------------- issue 24: the HTTP surface, clean exits


def _raw_http(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; (all the server answered before closing, seconds)."""
    import socket

    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out, time.monotonic() - t


def _post(body: bytes, content_type: str = "application/json", host: str = "127.0.0.1",
          extra: str = "", length: str | None = None) -> bytes:
    head = (f"POST /control HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n")
    return head.encode() + body


@pytest.mark.parametrize("request_bytes, status, reason", [
    # issue 24, 1: another site's page (or a rebound DNS name) drove the stream
    (_post(b'{"set": "blink"}', host="evil.com"), 403, "loopback names"),
    (_post(b'{"set": "blink"}', extra="Origin: http://evil.com\r\n"), 403, "cross-site"),
    (_post(b'{"set": "blink"}', content_type="text/plain"), 415, "application/json"),
    (_post(b'{"set": "blink"}', content_type="application/x-www-form-urlencoded"), 415, "application/json"),
    (_post(b'{"set": "blink"}', content_type="application/json; charset=foo"), 415, "UTF-8"),
    (b"GET /state HTTP/1.1\r\nHost: evil.com\r\n\r\n", 403, "loopback names"),
    (b"GET /state HTTP/1.1\r\nHost: localhost:abc\r\n\r\n", 400, "Host"),
    # 2: a negative or non-numeric length read until the client closed (or raised)
    (_post(b"x" * 100_000, length="-1"), 400, "Content-Length"),
    (_post(b"{}", length="abc"), 400, "Content-Length"),
    (_post(b"{}", length="99999999"), 413, "over 65536 bytes"),
    # 3: wrong types were TypeErrors without an answer
    (_post(b'{"set": "emotion", "preset": ["a"]}'), 400, "emotion preset must be a name"),
    (_post(b'{"a": 1}'), 400, 'a control command is a JSON object with \\"set\\"'),
    (_post(b'{"set": ["emotion"]}'), 400, "unknown control"),
    (_post(b'{"set": "freeze", "factor": {}}'), 400, "freeze needs factor"),
    (_post(b'{"set": "pose_source", "source": "' + b"a" * 5000 + b'"}'), 400, "pose_source needs"),
    (_post(b"[" * 60_000), 400, "nested deeper"),
    (_post(b'{"set": "gaze", "offset": [NaN, 0]}'), 400, "gaze offset"),
])
def test_control_endpoint_refuses_hostile_requests(request_bytes, status, reason, caplog):
    """Each answered with its 4xx and reason, nothing queued, one INFO line, no traceback."""
    import logging

    from trtalk.families.controls import ControlServer, Controls

    caplog.set_level(logging.INFO)
    controls = Controls({"happy": torch.ones(30)})
    with ControlServer(controls, port=0) as srv:
        answer, seconds = _raw_http(srv.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split(b" ", 2)[1]) == status, answer[:300]
    assert reason.encode() in body, body
    assert seconds < 5 and controls.begin_frame(0) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def test_control_endpoint_times_out_slow_clients():
    """Issue 24, 2 and 7: a client that never finishes its headers or its body is dropped after
    the read timeout (shortened to 1 s), holding nothing."""
    from trtalk.families.controls import ControlServer, Controls

    controls = Controls()
    with ControlServer(controls, port=0, read_timeout_s=1.0) as srv:
        answer, seconds = _raw_http(srv.port, b"POST /cont")
        assert answer == b"" and 0.8 < seconds < 4
        answer, seconds = _raw_http(srv.port, _post(b"{", length="10"))
        assert answer == b"" and 0.8 < seconds < 4
        ok, _ = _raw_http(srv.port, _post(b'{"set": "blink"}'))
        assert ok.startswith(b"HTTP/1.0 200")


def test_control_endpoint_closes_promptly_while_a_pose_file_is_encoded():
    """Issue 24: `ControlServer.close` waited up to 60 s for a pose file being encoded. Encoding
    now checks `Controls.check_open` per frame (`PDFGCFamily._encode_file`), so closing cancels
    it: here an encoding that would take 60 s stops at its next step, close returns in seconds,
    no request thread is left and the client gets a 503 (nothing queued)."""
    from trtalk.families.controls import ControlServer, Controls

    controls = Controls()
    started, steps = threading.Event(), []

    def prepare(path):  # 1200 steps of 50 ms, checking between them as the real encoder does
        started.set()
        for i in range(1200):
            controls.check_open("detect", i, 1200)
            steps.append(i)
            time.sleep(0.05)
        return torch.zeros(1)

    controls.prepare_pose = prepare
    srv = ControlServer(controls, port=0).start()
    answers: list[bytes] = []
    client = threading.Thread(target=lambda: answers.append(_raw_http(srv.port, _post(
        b'{"set": "pose_source", "source": "' + str(ROOT / "trtalk/assets/astronaut.png").encode() + b'"}'),
        timeout=30)[0]))
    client.start()
    assert started.wait(20)
    t = time.monotonic()
    srv.close()
    closed_in = time.monotonic() - t
    client.join(10)
    assert closed_in < 5 and len(steps) < 200, (closed_in, len(steps))
    assert not any(h.is_alive() for h in srv._handlers)
    assert answers and answers[0].startswith(b"HTTP/1.0 503") and b"the stream is ending" in answers[0]
    assert controls.begin_frame(0) == []  # nothing queued


def test_control_token_needs_eight_characters(capsys):
    """Issue 24: serve required 8+ characters, ``stream --control-token`` took anything."""
    line = _one_line_error(["stream", "--audio", str(ROOT / "trtalk/assets/demo_speech.wav"), "--control",
                            "--control-token", "short"], capsys)
    assert "--control-token must be at least 8 characters" in line


EXIT_DURING_POSE_SWITCH = r"""
import json, sys, threading, time, urllib.request
import torch
from trtalk.families.controls import ControlServer, Controls

controls = Controls()

def prepare(path):  # a pose file being encoded: seconds of native code in the request thread
    x, t = torch.randn(512, 512), time.monotonic()
    while time.monotonic() - t < 3:
        x = torch.tanh(x @ x)
    return x

controls.prepare_pose = prepare
with ControlServer(controls, port=0) as srv:
    req = urllib.request.Request(f"{srv.url}/control", method="POST",
                                 headers={"Content-Type": "application/json"},
                                 data=json.dumps({"set": "pose_source", "source": sys.argv[1]}).encode())
    threading.Thread(target=lambda: urllib.request.urlopen(req, timeout=30).read(), daemon=True).start()
    time.sleep(1.0)  # the stream ends while the switch is being encoded
print("stream over", flush=True)
"""


def test_stream_ends_cleanly_while_a_pose_switch_is_encoded(tmp_path):
    """Issue 24, 4: the stream ended (or got SIGINT) while a ``pose_source`` file was being
    encoded in the endpoint's daemon thread: exit 134, "terminate called without an active
    exception" (4 of 4; 2 of 2 with this script before the fix). The endpoint now joins its
    request threads when it closes."""
    script = tmp_path / "exit_probe.py"
    script.write_text(EXIT_DURING_POSE_SWITCH)
    out = subprocess.run([sys.executable, str(script), str(ROOT / "trtalk/assets/astronaut.png")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stream over" in out.stdout and "terminate called" not in out.stderr


@pytest.mark.parametrize("argv, message", [
    (["serve", "--capacity-fps", "nan"], "--capacity-fps must be a finite number"),
    (["serve", "--capacity-fps", "inf"], "--capacity-fps must be a finite number"),
    (["serve", "--capacity-fps", "0"], "--capacity-fps 0 is out of range"),
    (["serve", "--capacity-fps", "-5"], "--capacity-fps -5 is out of range"),
    (["serve", "--max-upload-mb", "inf"], "--max-upload-mb must be a finite number"),
    (["serve", "--max-upload-mp", "inf"], "--max-upload-mp must be a finite number"),
    (["serve", "--port", "70000"], "--port 70000 is out of range: it must be between 0 and 65535"),
    (["serve", "--port", "-1"], "--port -1 is out of range"),
    (["serve", "--max-connections", "0"], "--max-connections 0 is out of range"),
    (["stream", "--control-port", "70000"], "--control-port 70000 is out of range"),
    (["stream", "--stats", "inf"], "--stats must be a finite number"),
    (["render", "--lost-hold-s", "inf"], "--lost-hold-s must be a finite number"),
    (["render", "--seed", "-1"], "--seed -1 is out of range"),
    (["render", "--emotion-strength", "nan"], "--emotion-strength must be a finite number"),
    (["render", "--mouth-blend", "1.5"], "--mouth-blend 1.5 is out of range"),
    (["render", "--motion-max-yaw", "1e300"], "--motion-max-yaw 1e+300 is out of range"),
    (["export", "--max-batch", "0"], "--max-batch 0 is out of range"),
    (["bench", "--batch", "1,100000"], "--batch 100000 is out of range"),
    (["bench", "--stream-duration", "inf"], "--stream-duration must be a finite number"),
])
def test_numeric_options_are_bounded_before_anything_loads(argv, message, capsys, monkeypatch):
    """Issue 24, 6: ``serve --capacity-fps nan|inf``, ``--max-upload-mb inf``, ``--port 70000``
    crashed with a traceback after the model had loaded and warmed up; ``--capacity-fps 0``
    started a server that refused everyone. Every numeric flag now declares its bounds
    (`trtalk.configcli.option(bounds=...)`), floats must be finite, and the check runs when the
    flags are read: one line, exit 2, nothing loaded."""
    from trtalk.runtime.options import ModelOptions

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(ModelOptions, "open", no_model)
    line = _one_line_error(argv, capsys)
    assert message in line, line


def test_every_numeric_flag_declares_bounds():
    """The general rule behind the test above: an int or float flag of any command without
    declared bounds is a mistake (a new option must say its range)."""
    import argparse

    from trtalk import configcli
    from trtalk.cli import SUBCOMMAND_MODULES
    import importlib
    import dataclasses

    unbounded = []
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, p in action.choices.items():
                func = p.get_default("func")
                cls = getattr(func, "cls", None)
                if cls is None or not dataclasses.is_dataclass(cls):
                    continue
                for opt in configcli._options(cls):
                    if opt.parse in (int, float) and opt.spec.bounds is None:
                        unbounded.append(f"{command} {opt.name}")
    assert unbounded == [], unbounded


# ---------------------------------------------------------------- issue 24: disk full


@pytest.fixture
def full_disk(tmp_path):
    """A 40 KB tmpfs (root only; elsewhere the monkeypatched tests below cover the same paths)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _small_checkpoint(path: Path) -> Path:
    from safetensors.torch import save_file

    from trtalk.families.pcavs.checkpoint import FORMAT, NETWORKS
    from trtalk.families.pcavs.model import PCAVS

    small = PCAVS.random(0, PCAVSConfig.small())
    tensors = {f"{n}.{k}": v.contiguous() for n in NETWORKS for k, v in small.network(n).state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": small.config.to_json()})
    return path


def test_disk_full_is_one_line_for_every_writer(full_disk, tmp_path, capsys):
    """Issue 24, 9: on a full disk render (av OSError), stream --record, convert
    (SafetensorError) and export onnx (OSError) exited 1 with tracebacks. Now: one line, exit
    2, nothing left on the full disk."""
    speech = str(ROOT / "trtalk/assets/demo_speech.wav")
    runs = {
        "render": ["render", "--audio", speech, "--duration", "2", "-o", str(full_disk / "r.mp4")],
        "stream": ["stream", "--audio", speech, "--fast", "--duration", "2", "--record", str(full_disk / "s.mp4")],
        "convert": ["convert", str(_small_checkpoint(tmp_path / "src.safetensors")), "-o",
                    str(full_disk / "c.safetensors")],
        "export": ["export", "--model-config", "small", "--out", str(full_disk / "e")],
    }
    for name, argv in runs.items():
        line = _one_line_error(argv, capsys)
        assert "no space left on the device" in line, (name, line)
        assert list(full_disk.iterdir()) == [], (name, list(full_disk.iterdir()))


def test_disk_full_without_root(tmp_path, capsys, monkeypatch):
    """The same through monkeypatched writers (ENOSPC from the mp4 muxer, safetensors' own
    error text), for machines where no tmpfs can be mounted."""
    import errno

    import safetensors.torch

    from trtalk.media.mp4 import Mp4Sink

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Mp4Sink, "_write", full)
    line = _one_line_error(["render", "--audio", str(ROOT / "trtalk/assets/demo_speech.wav"), "--duration", "1",
                            "-o", str(tmp_path / "out" / "r.mp4")], capsys)
    assert "no space left on the device while writing" in line and "r.mp4" in line

    class SafetensorError(Exception):
        pass

    def full_safetensors(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    src = _small_checkpoint(tmp_path / "src.safetensors")
    monkeypatch.setattr(safetensors.torch, "save_file", full_safetensors)
    line = _one_line_error(["convert", str(src), "-o", str(tmp_path / "c" / "m.safetensors")], capsys)
    assert "no space left on the device while writing" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_aot_build_checks_free_space_first(tmp_path, capsys, monkeypatch):
    """Issue 24, 9: ``export --target aot`` on a full disk aborted inside the C++ compiler
    (exit 134). It now checks the free space before building: one line, exit 2."""
    import shutil as _shutil

    from trtalk.export import aot

    real = _shutil.disk_usage
    monkeypatch.setattr(aot, "build_aot_package", lambda *a, **k: pytest.fail("built on a full disk"))
    monkeypatch.setattr("trtalk.fsutil.shutil.disk_usage",
                        lambda p: real(p)._replace(free=30 << 20))  # 30 MB free
    line = _one_line_error(["export", "--target", "aot", "--model-config", "small", "--device", "cpu",
                            "--precision", "fp32", "--cache-dir", str(tmp_path / "cache")], capsys)
    assert re.search(r"building the aot \w+ package needs about [\d.]+ GiB free in .*; 0.0 GiB are", line), line


def test_aot_compiler_files_go_under_the_cache_and_are_removed(tmp_path, monkeypatch):
    """Issue 24: 724 MB of compiler files stayed in the system temp folder after AOT builds.
    The compiler's cache folder is now inside the build's temp folder in trtalk's cache, removed
    with it (a stand-in compiler records where it was told to write)."""
    import torch._inductor
    import torch._inductor.package

    from trtalk.export import aot
    from trtalk.families.pcavs.model import PCAVS

    seen = {}

    def fake_compile(module, args, options):
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        seen["cache"] = Path(cache_dir())
        out = Path(options["aot_inductor.output_path"])
        out.mkdir(parents=True)
        (seen["cache"] / "junk.o").write_bytes(b"x" * 1000)
        return [str(out)]

    monkeypatch.setattr(torch._inductor, "aot_compile", fake_compile)
    monkeypatch.setattr(torch._inductor.package, "package_aoti", lambda path, files: Path(path).write_bytes(b"pkg"))
    monkeypatch.setattr(aot, "_check_package", lambda *a: {"max_abs_diff": 0.0, "batch": 1})
    engines = tmp_path / "cache" / "engines"
    engines.mkdir(parents=True)
    model = PCAVS.random(0, PCAVSConfig.small())
    stage = next(iter(aot.stage_specs(model)))
    aot.build_aot_package(model, stage, aot.AotOptions(device="cpu", precision="fp32", buckets=(1,)),
                          engines / "x.pt2")
    assert seen["cache"].is_relative_to(engines)
    assert sorted(p.name for p in engines.iterdir()) == ["x.pt2"]  # the work folder is gone
    assert not os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").startswith(str(engines))


def test_corrupt_cache_copies_are_pruned(tmp_path):
    """Issue 24: ``.corrupt-*`` copies piled up in the engine cache (5 x 33 MB): the newest
    `KEEP_CORRUPT` stay, older ones (engine and sidecar together) go."""
    from trtalk.export.cache import KEEP_CORRUPT, prune_corrupt

    for i in range(6):
        for name in (f"gen-abc.plan.corrupt-2026120{i}T000000Z", f"gen-abc.plan.json.corrupt-2026120{i}T000000Z"):
            (tmp_path / name).write_bytes(b"x")
            os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "gen-abc.plan").write_bytes(b"ok")
    prune_corrupt(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["gen-abc.plan"] + sorted(
        f"gen-abc.plan{j}.corrupt-2026120{i}T000000Z" for i in range(6 - KEEP_CORRUPT, 6) for j in ("", ".json"))


# ------------------------------------------------- issue 24: caches validate their contents


@pytest.mark.parametrize("damage", ["coef_shape", "coef_columns", "degree", "nan", "centres", "low_high"])
def test_damaged_angle_map_contents_are_refitted(tmp_path, damage, caplog):
    """Issue 24, 10: a cached angle map of valid format but wrong contents was used: a `coef`
    of the wrong shape gave a traceback on every run, ``degree=1e6`` a MemoryError after 40 s,
    NaN coefficients near-black frames. Each is now refitted (the encoder runs again)."""
    from trtalk.motion import posemap

    g = posemap.GridSpec(yaw=(-10.0, 0.0, 10.0), pitch=(-5.0, 5.0), roll=(0.0,), held_out=4)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5))
    photo = np.zeros((8, 8, 3), np.uint8)
    calls = []

    class FakeRenderer:
        def __init__(self, *a):
            pass

        def __call__(self, angles):
            return list(angles), list(angles)

    def encode(crops, meshes):
        calls.append(len(crops))
        return np.tanh(np.radians(np.asarray(crops)) @ w)

    import unittest.mock as mock

    with mock.patch.object(posemap, "GridRenderer", FakeRenderer):
        good = posemap.build_angle_map(photo, encode, family="f", weights_id="w", grid=g, cache_dir=tmp_path)
        (path,) = (tmp_path / "posemaps").glob("*.npz")
        with np.load(path) as z:
            parts = dict(z)
        if damage == "coef_shape":
            parts["coef"] = parts["coef"][:-2]
        elif damage == "coef_columns":
            parts["coef"] = parts["coef"][:, :3]
        elif damage == "degree":
            parts["degree"] = np.array(1_000_000)
            parts["kind"] = np.array("poly")
        elif damage == "nan":
            parts["coef"] = np.full_like(parts["coef"], np.nan)
        elif damage == "centres":
            parts["centres"] = parts["centres"][:2]
        else:
            parts["low"], parts["high"] = parts["high"], parts["low"]
        with open(path, "wb") as f:
            np.savez(f, **parts)
        calls.clear()
        t = time.monotonic()
        again = posemap.build_angle_map(photo, encode, family="f", weights_id="w", grid=g, cache_dir=tmp_path)
    assert calls == [len(g.train_angles()) + g.held_out], damage  # fitted again
    assert time.monotonic() - t < 10
    assert np.allclose(again.coef, good.coef) and "is unusable" in caplog.text


def test_nan_or_inf_weights_are_refused_naming_the_tensor(tmp_path, capsys, pdfgc_model):
    """Issue 24: a PD-FGC checkpoint with NaN weights rendered black frames, exit 0, no
    warning. Every checkpoint loader (PC-AVS folder and safetensors, PD-FGC) now refuses NaN or
    Inf with a one-line error naming the tensor."""
    import copy

    from trtalk.families.pdfgc import model as P
    from trtalk.families.pcavs.checkpoint import load_pcavs

    src = _small_checkpoint(tmp_path / "pc.safetensors")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(src), metadata=meta)
    with pytest.raises(TrtalkError, match=rf"tensor '{re.escape(name.split('.', 1)[1])}' holds NaN or Inf"):
        load_pcavs(src)
    line = _one_line_error(["convert", str(src), "-o", str(tmp_path / "c.safetensors")], capsys)
    assert "holds NaN or Inf" in line

    bad = copy.deepcopy(pdfgc_model)
    with torch.no_grad():
        next(bad.generator.parameters()).fill_(float("nan"))
    path = P.save_pdfgc_safetensors(bad, tmp_path / "pd.safetensors")
    with pytest.raises(TrtalkError, match=r"tensor '.*' holds NaN or Inf"):
        P.load_pdfgc(path)


# -------------------------------------------------------- issue 24: smaller option items


def test_mouth_video_gives_the_clip_s_frames(talking_video_path, tmp_path, capsys):
    """Issue 24: ``--mouth video`` on a 50-frame clip (with its AAC track, a little longer)
    gave 51 frames; ``--mouth video photo.png`` said the audio was too short."""
    from trtalk.media.read import probe

    out = tmp_path / "dub.mp4"
    assert main(["render", "--mouth", "video", str(talking_video_path), "-o", str(out)]) == 0
    assert probe(talking_video_path).num_frames == 50 and probe(out).num_frames == 50
    rec = tmp_path / "rec.mp4"
    assert main(["stream", "--mouth", "video", str(talking_video_path), "--fast", "--record", str(rec)]) == 0
    assert probe(rec).num_frames == 50
    line = _one_line_error(["render", "--mouth", "video", str(ROOT / "trtalk/assets/astronaut.png"),
                            "-o", str(tmp_path / "x.mp4")], capsys)
    assert "is an image" in line and "give a video" in line


@pytest.mark.parametrize("argv, message", [
    (["--eyes", ""], "--eyes is empty"),
    (["--emotion", "."], "--emotion is empty"),
    (["--emotion-presets", ",,,"], "--emotion-presets names no file"),
])
def test_empty_pdfgc_factor_values_are_refused(argv, message, tmp_path, capsys):
    """Issue 24: ``--eyes ""`` read the current folder as a video; ``--emotion-presets ",,,"``
    was accepted."""
    line = _one_line_error(["render", "--model", "pdfgc", "--model-config", "small", *argv,
                            "-o", str(tmp_path / "x.mp4")], capsys)
    assert message in line


def test_stream_pose_off_as_documented(tmp_path, capsys, monkeypatch):
    """Issue 24: ``stream --pose off`` (README: PD-FGC's zero pose code) was refused ("off does
    not exist"). It now sets the pose factor off on PD-FGC and is a one-line error elsewhere."""
    from trtalk.runtime import options

    seen = []
    real_open = options.ModelOptions.open

    def spy_open(self, *a, **k):
        family = real_open(self, *a, **k)
        real_set = family.set_factor
        family.set_factor = lambda st, factor, spec: seen.append((factor, spec.kind)) or real_set(st, factor, spec)
        return family

    monkeypatch.setattr(options.ModelOptions, "open", spy_open)
    speech = str(ROOT / "trtalk/assets/demo_speech.wav")
    assert main(["stream", "--audio", speech, "--fast", "--duration", "0.3", "--pose", "off", "--model", "pdfgc",
                 "--model-config", "small"]) == 0
    assert seen == [("pose", "off")]
    line = _one_line_error(["stream", "--audio", speech, "--fast", "--pose", "off"], capsys)
    assert "--pose off is a PD-FGC switch" in line
