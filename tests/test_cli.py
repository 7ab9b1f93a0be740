"""The command line as a new user meets it (issue 23): one vocabulary (``--face``, ``--avatar``
a hidden alias; a command offers only the flags that apply to it), short help with examples and
``--help-all``, "did you mean" for a mistyped flag or command, ``--config FILE.toml`` and
``--print-config``, lazy imports behind ``trtalk --help``, progress bars only on a terminal,
stream's word when it has no output, and a bench report without internal names, long floats,
or another device's targets. Fast: parsers and small pure functions, no model is loaded."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import trtalk.cli
from trtalk.configcli import config_from_args

ROOT = Path(__file__).resolve().parent.parent
WITH_OPTIONS = ("render", "demo", "stream", "serve", "export", "bench", "models", "convert", "livekit-worker")
#: The most lines `trtalk COMMAND --help` may print (it was 186-231 for the long ones).
MAX_HELP_LINES = 60


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return trtalk.cli.build_parser()


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _flags(p: argparse.ArgumentParser, *, visible_only: bool = False) -> set[str]:
    return {s for a in p._actions for s in a.option_strings
            if not visible_only or a.help is not argparse.SUPPRESS}


def _exit_message(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exc:
        trtalk.cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("name", [*WITH_OPTIONS, "devices"])
def test_help_is_short_and_shows_examples(parser: argparse.ArgumentParser, name: str) -> None:
    text = _sub(parser, name).format_help()
    lines = text.splitlines()
    assert len(lines) <= MAX_HELP_LINES, f"{name}: {len(lines)} lines"
    assert lines[0].startswith(f"usage: trtalk {name}") and len(lines[1].strip()) == 0 or \
        lines[1].startswith(" "), lines[:3]  # usage: one line (two at most)
    assert "examples:" in text
    examples = [ln for ln in text.split("examples:")[1].splitlines() if ln.startswith(f"  trtalk ")]
    assert len(examples) >= (1 if name == "devices" else 2), examples
    assert all(f" {name}" in ln for ln in examples if name != "devices" or "-v" not in ln)


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_help_all_lists_every_option(parser: argparse.ArgumentParser, name: str) -> None:
    p = _sub(parser, name)
    everything = p.format_help(everything=True)
    for action in p._actions:
        if action.help is argparse.SUPPRESS or not action.option_strings:
            continue
        assert any(s in everything for s in action.option_strings), (name, action.option_strings)
    assert "--help-all" in p.format_help()


def test_common_flags_come_first(parser: argparse.ArgumentParser) -> None:
    short = _sub(parser, "render").format_help()
    options = short.split("\noptions:")[1]
    assert options.index("--face") < options.index("--audio") < options.index("--output") < options.index("--checkpoint")
    assert "--lost-hold-s" not in short and "--motion-amplitude" not in short  # advanced: --help-all
    assert "--lost-hold-s" in _sub(parser, "render").format_help(everything=True)
    assert len(short.splitlines()) < len(_sub(parser, "render").format_help(everything=True).splitlines()) / 2


def test_a_flag_that_does_not_apply_is_not_offered(parser: argparse.ArgumentParser) -> None:
    demo, serve, render = (_flags(_sub(parser, n)) for n in ("demo", "serve", "render"))
    # demo: a file render on the warp avatar: no live timing, no PD-FGC factors
    assert not {"--audio-timeout-s", "--max-delay-s", "--camera-timeout-s", "--eyes", "--emotion",
                "--mouth-smoothing"} & demo
    # serve: the scheduler's batch is --max-batch, sessions end by themselves, the page picks the mouth
    assert not {"--batch", "--duration", "--mouth"} & serve
    assert {"--max-batch", "--mouth-blend", "--max-delay-s"} <= serve
    assert {"--lost-hold-s", "--eyes", "--batch", "--duration"} <= render
    # what is not offered keeps its default
    from trtalk.runtime.render_cli import DemoConfig
    from trtalk.serve.cli import ServeCommand

    assert config_from_args(DemoConfig, parser.parse_args(["demo"])) == DemoConfig()
    assert config_from_args(ServeCommand, parser.parse_args(["serve"])) == ServeCommand()


def test_face_everywhere_avatar_a_hidden_alias(parser: argparse.ArgumentParser) -> None:
    assert "--face" in _flags(_sub(parser, "livekit-worker"), visible_only=True)
    for name in ("render", "demo", "stream"):
        p = _sub(parser, name)
        assert "--face" in _flags(p, visible_only=True) and "--avatar" not in _flags(p, visible_only=True)
        assert "--avatar" not in p.format_help(everything=True)
        cls = parser.parse_args([name]).func.cls
        by_alias = config_from_args(cls, parser.parse_args([name, "--avatar", "me.jpg"]))
        assert by_alias == config_from_args(cls, parser.parse_args([name, "--face", "me.jpg"]))
    stream = config_from_args(parser.parse_args(["stream"]).func.cls,
                              parser.parse_args(["stream", "--avatar", "me.jpg"]))
    assert stream.stream.face == Path("me.jpg")
    from trtalk.configcli import inconsistent_flags

    problems = inconsistent_flags(parser)
    assert not [p for p in problems if p.startswith(("--face", "--avatar"))], problems  # one meaning


def test_an_unknown_flag_gets_the_command_usage_and_the_closest_flag(capsys) -> None:
    err = _exit_message(["render", "--audo", "talk.wav"], capsys)
    assert err.startswith("usage: trtalk render ")
    assert "unrecognized arguments: --audo talk.wav (did you mean --audio?)" in err
    err = _exit_message(["stream", "--virtualcam"], capsys)
    assert "did you mean --virtual-cam?" in err
    err = _exit_message(["render", "--fps", "fast"], capsys)
    assert "invalid float value: 'fast'" in err and "did you mean" not in err
    err = _exit_message(["rendr"], capsys)
    assert "did you mean render?" in err


def test_the_command_table_matches_the_modules(parser: argparse.ArgumentParser) -> None:
    """`trtalk.cli.COMMANDS` (what `trtalk --help` lists without importing) is what the modules
    register."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = {c.dest: c.help for c in action._choices_actions}
    assert registered == {name: help_ for name, (_, help_) in trtalk.cli.COMMANDS.items()}, \
        "a command was added or its help changed: update trtalk.cli.COMMANDS (what `trtalk --help` shows)"
    lazy = trtalk.cli.build_parser("")
    lazy_action = next(a for a in lazy._actions if isinstance(a, argparse._SubParsersAction))
    assert lazy.format_help() == parser.format_help()
    assert list(lazy_action.choices) == list(action.choices)


def test_top_level_help_imports_no_torch() -> None:
    code = ("import sys, trtalk.cli\n"
            "try:\n    trtalk.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'trtalk.runtime.render' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False False"
    assert "trtalk render" in res.stdout and "examples:" in res.stdout


# ----------------------------------------------------------------------------- config files


CASES = {
    "render": ["--face", "f.png", "--fps", "30", "--paste-back", "--mouth", "video", "v.mp4",
               "--motion-amplitude", "0.5", "--model", "pcavs", "--backend", "onnxruntime"],
    "demo": ["-o", "d.mp4", "--duration", "2.5", "--size", "320"],
    "stream": ["--mic", "--virtual-cam", "--stats", "--avatar", "a b\"c.png", "--paste-back"],
    "serve": ["--port", "9000", "--max-batch", "4", "--mouth-blend", "0.5"],
    "export": ["--out", "o", "--target", "aot", "--precision", "fp32", "--buckets", "1,8"],
    "bench": ["--batch", "1,2", "--backends", "torch,onnxruntime", "--precision", "fp32"],
    "models": ["--json"],
    "convert": ["ck", "-o", "x.safetensors"],
    "livekit-worker": ["--face", "me.jpg", "--max-avatars", "4", "--url", "ws://127.0.0.1:7880"],
}


def _print_config(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert trtalk.cli.main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_print_config_then_config_gives_the_same_options(name: str, parser, tmp_path, capsys) -> None:
    argv = [name, *CASES[name]]
    want = config_from_args(parser.parse_args(argv).func.cls, parser.parse_args(argv))
    text = _print_config(argv, capsys)
    assert text.startswith(f"# trtalk {name} options")
    f = tmp_path / "c.toml"
    f.write_text(text)
    positional = ["ck"] if name == "convert" else []  # a positional is not a file key
    args = parser.parse_args([name, *positional, "--config", str(f)])
    assert config_from_args(args.func.cls, args) == want
    assert _print_config([name, *positional, "--config", str(f)], capsys) == text  # a fixed point


def test_flags_override_the_file_and_an_exclusive_choice_replaces_the_file_one(parser, tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('fps = 30.0\nmic = ""\nrecord = "x.mp4"\nmotion-amplitude = 0.5\n')
    args = parser.parse_args(["stream", "--config", str(f), "--fps", "12", "--audio", "a.wav"])
    cfg = config_from_args(args.func.cls, args)
    assert cfg.stream.fps == 12.0 and cfg.stream.motion.amplitude == 0.5
    assert cfg.audio == Path("a.wav") and cfg.mic is None  # --audio replaces the file's --mic
    assert cfg.record == Path("x.mp4")
    # a required flag may come from the file (convert's -o)
    f.write_text('output = "x.safetensors"\n')
    args = parser.parse_args(["convert", "ck", "--config", str(f)])
    assert config_from_args(args.func.cls, args).output == Path("x.safetensors")


@pytest.mark.parametrize("content, message", [
    ('fsp = 30\n', "'fsp' is not an option of this command (did you mean 'fps'?)"),
    ('avatar = "x.png"\n', "'avatar' is not an option of this command"),  # keys are the flags' names
    ('fps = "fast"\n', "fps: expected a number, got \"fast\""),
    ('batch = 2.5\n', "batch: expected an integer, got 2.5"),
    ('paste-back = 1\n', "paste-back: expected true or false, got 1"),
    ('layout = "tiled"\n', "layout: 'tiled' is not one of generated, side-by-side"),
    ('[render]\nfps = 3\n', "'render' is a table; the file is flat"),
    ('fps = \n', "is not valid TOML"),
    ('__import__ = "os"\n', "'__import__' is not an option of this command"),
])
def test_a_bad_config_file_is_a_one_line_error(content, message, tmp_path, capsys) -> None:
    f = tmp_path / "c.toml"
    f.write_text(content)
    err = _exit_message(["render", "--config", str(f)], capsys)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"trtalk: error: --config {f}") and message in err, err


def test_a_config_file_is_checked_like_flags(tmp_path, capsys) -> None:
    f = tmp_path / "c.toml"
    f.write_text("fps = 0\n")
    assert trtalk.cli.main(["demo", "--config", str(f)]) == 2  # bounds: as --fps 0
    assert capsys.readouterr().err.strip() == "trtalk: error: --fps 0 is out of range: it must be between 0.1 and 240"
    f.write_bytes(b"fps = 1\n" + b"#" * (2 << 20))
    assert "larger than 1 MiB" in _exit_message(["demo", "--config", str(f)], capsys)
    f.write_bytes(b"fps = \xff\n")
    assert "not UTF-8" in _exit_message(["demo", "--config", str(f)], capsys)
    assert "cannot read --config" in _exit_message(["demo", "--config", str(tmp_path / "none.toml")], capsys)
    f.write_text("batch = 4\n")
    assert "not an option of this command" in _exit_message(["serve", "--config", str(f)], capsys)


# ----------------------------------------------------------------------------- progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_not_quiet() -> None:
    from trtalk import progress

    tty = _Tty()
    progress.set_terminal(tty)
    try:
        with progress.bar(total=4, desc="render", unit="frame") as b:
            for _ in range(4):
                b.update(1)
        assert "render" in tty.getvalue() and "4/4" in tty.getvalue()
        with progress.steps(2, "export", unit="stage") as s:
            s.next("identity")
            s.next("generator")
        assert "2/2" in tty.getvalue() and "generator" in tty.getvalue()
        progress.set_enabled(False)  # trtalk -q
        quiet = _Tty()
        progress.set_terminal(quiet)
        with progress.bar(total=4, desc="render") as b:
            b.update(4)
        assert quiet.getvalue() == ""
        progress.set_enabled(True)
        piped = io.StringIO()  # not a terminal
        progress.set_terminal(piped)
        with progress.bar(total=4, desc="render") as b:
            b.update(4)
        assert piped.getvalue() == ""
    finally:
        progress.set_terminal(None)
        progress.set_enabled(True)


# ----------------------------------------------------------------------------- stream's output


def test_stream_without_an_output_says_so(parser, capsys) -> None:
    from trtalk.runtime import stream_cli

    cmd = config_from_args(stream_cli.StreamCommand, parser.parse_args(["stream"]))
    with stream_cli._make_sink(cmd):
        pass
    err = capsys.readouterr().err
    assert err.strip() == stream_cli.NO_SINK_NOTE and "--virtual-cam" in err and "--record" in err
    cmd = config_from_args(stream_cli.StreamCommand, parser.parse_args(["stream", "--sink", "null"]))
    with stream_cli._make_sink(cmd):
        pass
    assert capsys.readouterr().err == ""


def test_install_script_installs_the_stream_extra() -> None:
    text = (ROOT / "scripts" / "install.sh").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert '"stream": ["sounddevice' in setup and "pyvirtualcam" in setup
    line = next(ln for ln in text.splitlines() if "pip install" in ln and "-e" in ln)
    assert "stream" in line.split("[")[1]


# ----------------------------------------------------------------------------- bench report


def _result(gpu: str | None) -> dict:
    row = {"batch": 1, "ms": {s: {"p50": 1.0, "p90": 1.1, "p99": 1.2} for s in
                              ("identity", "pose", "audio", "generator", "frame")},
           "frames_per_s": 1000.0, "fraction_of_peak": {"frame": 0.1, "generator": 0.2},
           "achieved_tflops": {"frame": 0.5}}
    runs = [{"label": label, "backend": label, "precision": "fp32", "device": "cpu", "available": True,
             "notes": [], "reason": None, "batches": [row], "host_memory": {"kind": "RSS", "peak_rss_bytes": 1 << 30}}
            for label in ("torch-ref", "torch", "onnxruntime")]
    return {"command": "trtalk bench --batch 1", "wall_s": 3.2, "frame_definition": "pose + audio + generator",
            "machine": {"cpu": "Some CPU", "cpu_cores": 2, "cpu_ghz": 2.4454059999999997, "cpu_simd": ["avx2"],
                        "torch_threads": 2, "device": "cuda" if gpu else "cpu", "platform": "Linux", "gpu": gpu,
                        "gpu_capability": "9.0", "nvidia_driver": "1", "cuda": "12"},
            "config": {"model_config": "small", "weights": "random", "warmup": 1, "iters": 2, "threads": None},
            "flops_method": "counted", "flops_frame": 2e9,
            "flops_vs_design": {"pose": {"gflop": 12.7, "design_gflop": 12.7, "rel_diff": 0.0,
                                         "verdict": "near the reference"}},
            "peaks": {"fp32": {"flops": 1e12, "basis": "estimate"}}, "runs": runs,
            "speedup_vs_torch_ref_p50": {}, "best": {},
            "targets": {"device": "H100, FP16", "measured_here": gpu is not None,
                        "items": [{"what": "generator latency, batch 1", "target": "<= 0.5 ms",
                                   "metric": "generator_ms_b1"}]}}


def test_bench_report_reads_clean() -> None:
    from trtalk.bench.report import markdown

    cpu = markdown(_result(None))
    assert "DESIGN" not in cpu and ".md" not in cpu.replace("results.md", "")
    assert "2.45 GHz" in cpu and "2.4454" not in cpu
    assert "Targets" not in cpu and "H100" not in cpu  # a CPU report has no H100 goals
    assert "## Targets (H100, FP16)" in markdown(_result("NVIDIA H100 80GB HBM3"))
    assert "Targets" not in markdown(_result("NVIDIA GeForce RTX 4090"))


@pytest.mark.parametrize("which", ["breakdown", "latency"])
def test_bench_plot_legends_are_clear_of_the_data(which: str) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from trtalk.bench.report import breakdown_figure, latency_figure

    fig = breakdown_figure(_result(None), 1) if which == "breakdown" else latency_figure(_result(None))
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None
            box, area = legend.get_window_extent(), ax.get_window_extent()
            assert box.x0 >= area.x1 or box.x1 <= area.x0 or box.y0 >= area.y1 or box.y1 <= area.y0, \
                (which, box, area)
            assert box.x1 <= fig.bbox.x1 + 1  # and inside the picture
    finally:
        plt.close(fig)


def test_export_summary_is_readable_not_a_dict() -> None:
    from trtalk.export.exporter import describe

    t = SimpleNamespace
    graphs = {"identity": t(file="identity.onnx", bytes=12_300_000, inputs=[t(name="image", shape=[-1, 3, 224, 224])],
                            outputs=[t(name="id", shape=[-1, 512])]),
              "generator": t(file="generator_with_a_long_name.onnx", bytes=300_000_000,
                             inputs=[t(name="style", shape=[-1, 1024])], outputs=[t(name="frame", shape=[-1, 3, 224, 224])])}
    text = describe(t(graphs=graphs, engines={}, checkpoint={"path": None, "sha256": "ab" * 32,
                                                             "random_weights": True, "seed": 0}))
    assert "{" not in text and "null" not in text
    assert "weights: RANDOM (seed 0" in text
    lines = text.splitlines()
    assert lines[0].index("MB") == lines[1].index("MB")  # aligned columns
    text = describe(t(graphs=graphs, engines={}, checkpoint={"path": "pcavs.safetensors", "sha256": "ab" * 32,
                                                             "random_weights": False, "seed": None}))
    assert text.splitlines()[-1] == "weights: pcavs.safetensors (sha256 abababababab...)"


# ----------------------------------------------------------------------------- third-party noise


def test_stdout_keeps_order_with_the_filtered_log_on_one_pipe() -> None:
    """``trtalk render ... 2>&1 | cat``: the log (through the fd-2 filter thread) and stdout (the
    final "rendered ..." line) reach the one pipe in program order, native noise still dropped."""
    code = (
        "import logging, os, sys\n"
        "import trtalk.cli as c\n"
        "c._setup_logging(False, False)\n"
        "log = logging.getLogger('trtalk.x')\n"
        "with c._quiet_native_stderr(True):\n"
        "    for i in range(40):\n"
        "        log.info('log %d', i)\n"
        "        os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "        print(f'out {i}')\n"
        "    os.write(2, b'partial ')\n"  # a native line without its end, then stdout
        "    print('rendered 40 frames', file=sys.stdout)\n"
        "print('after', flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout
    want = [line for i in range(40) for line in (f"INFO trtalk.x: log {i}", f"out {i}")]
    assert res.stdout.splitlines() == [*want, "partial rendered 40 frames", "after"]


def test_native_noise_is_filtered_unless_verbose(capfd, monkeypatch) -> None:
    import contextlib
    import os

    from trtalk import progress

    with trtalk.cli._quiet_native_stderr(True):
        assert progress._stream() is not sys.stderr  # bars go to the terminal, around the filter
        os.write(2, b"W0000 00:00:1733480000.123456   12345 inference_feedback_manager.cc:114] noise\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'\n")
        os.write(2, b"trtalk: error: a real message\n")
        os.write(2, b"AttributeError: 'MessageFactory' object has no attribute 'GetPrototype' or x\n")
    err = capfd.readouterr().err
    assert err == ("trtalk: error: a real message\n"
                   "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype' or x\n")
    assert progress._stream() is sys.stderr
    seen = []
    monkeypatch.setattr(trtalk.cli, "_quiet_native_stderr",
                        lambda on: seen.append(on) or contextlib.nullcontext())
    monkeypatch.setattr(trtalk.cli, "_setup_logging", lambda verbose, quiet: None)
    capfd.readouterr()
    seen.clear()
    for argv, want in ((["models"], True), (["-v", "models"], False), (["-q", "models"], True)):
        assert trtalk.cli.main(argv) == 0
        assert seen.pop() is want, argv
