"""`trtalk` command line: one subcommand per job, each registered by the module that owns it.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=callable(args) -> int`` as default. `main` imports only the module of the command it runs
(`COMMANDS` names each command's module and one-line help, so that ``trtalk --help`` imports no
torch); `build_parser()` without a command imports them all. User errors (`TrtalkError`) print one line on stderr
and exit with status 2, as does a full disk (`trtalk.fsutil.disk_full`); nothing else is caught
here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import threading
import typing
import warnings
from collections.abc import Iterator

from trtalk import __version__, threads
from trtalk.errors import TrtalkError
from trtalk.signals import on_signals

# Idle OpenMP threads must sleep, and the OpenMP runtime reads that once, when torch loads: so
# before any subcommand module (they import torch) is imported. See trtalk/threads.py.
threads.prepare_env()
# mediapipe's absl/glog and TensorFlow Lite read these when they load: warnings and errors only
# (the fd-2 filter below catches what they print before reading them). A user's own setting wins.
for _name in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):
    os.environ.setdefault(_name, "2")

# Modules that register subcommands, in the order `trtalk --help` lists them.
SUBCOMMAND_MODULES = (
    "trtalk.runtime.render_cli",
    "trtalk.families.cli",
    "trtalk.motion.cli",
    "trtalk.export.cli",
    "trtalk.runtime.stream_cli",
    "trtalk.bench.cli",
    "trtalk.serve.cli",
    "trtalk.integrations.livekit_cli",
)

#: Each command's module and help, for the placeholders of the commands that do not run (tests
#: check this table against what the modules register). A module missing here is imported.
COMMANDS = {
    "render": ("trtalk.runtime.render_cli",
               "render a talking-face mp4 from a face, a speech track and a pose source"),
    "demo": ("trtalk.runtime.render_cli",
             "render a talking-face clip with the built-in warp avatar (no model downloads)"),
    "models": ("trtalk.families.cli", "list the model families (built-in and plugins) and their capabilities"),
    "convert": ("trtalk.families.cli", "convert an official PC-AVS or PD-FGC checkpoint folder to safetensors"),
    "motion": ("trtalk.motion.cli", "head motion styles for --pose auto (fit one to a video of a person)"),
    "export": ("trtalk.export.cli",
               "export a model's stages to ONNX (and TensorRT engines) or AOTInductor packages"),
    "stream": ("trtalk.runtime.stream_cli",
               "live talking face: mic/audio + webcam/pose -> virtual camera, preview or mp4"),
    "devices": ("trtalk.runtime.stream_cli", "list microphones, cameras, virtual camera, GPUs and backends"),
    "bench": ("trtalk.bench.cli", "benchmark every backend side by side (tables, plots), or the live stream"),
    "serve": ("trtalk.serve.cli",
              "web page: talk to the avatar in a browser over WebRTC (many sessions, one worker)"),
    "livekit-worker": ("trtalk.integrations.livekit_cli",
                       "avatar worker for LiveKit Agents: LiveKit dispatches avatars to it (many per GPU)"),
}

EXAMPLES = """examples:
  trtalk demo                      the built-in photo speaking the built-in clip -> out/demo.mp4
  trtalk render --face me.jpg --audio talk.wav -o talk.mp4
  trtalk stream --face me.jpg --mic --webcam --virtual-cam
  trtalk serve                     a web page on http://127.0.0.1:8080/

`trtalk COMMAND --help` shows a command's common options, `--help-all` all of them."""


class _TopParser(argparse.ArgumentParser):
    """The top-level parser: a mistyped command gets the closest one."""

    def error(self, message: str) -> typing.NoReturn:
        import difflib

        if "invalid choice" in message:
            word = message.split("invalid choice: ", 1)[1].split(" ", 1)[0].strip("'")
            close = difflib.get_close_matches(word, list(COMMANDS), n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `trtalk` parser; with ``command`` (a command name, or "" for none) only that command's
    module is imported, the others are placeholders that list their help."""
    parser = _TopParser(prog="trtalk", description="Real-time talking-face engine.",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trtalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the libraries' own messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        names = [n for n, (module, _) in COMMANDS.items() if module == name]
        if command is not None and names and command not in names:
            for n in names:
                sub.add_parser(n, help=COMMANDS[n][1])
        else:
            importlib.import_module(name).register(sub)
    return parser


def _command_of(argv: list[str]) -> str:
    """The command word of ``argv`` ("" when there is none: the top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from trtalk import progress

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    progress.set_enabled(not quiet)
    if verbose:
        return
    # mediapipe / absl / TensorFlow Lite are chatty at INFO; torch.export, onnx and friends warn
    # their API users about future changes (FutureWarning, DeprecationWarning): not for a user
    # of the command line (-v shows all of it).
    for noisy in ("absl", "matplotlib", "PIL", "torch", "onnxscript", "onnx_ir", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


# mediapipe's C++ side (absl logging before absl::InitializeLog, TensorFlow Lite) writes straight to
# file descriptor 2: "W0000 00:00:... inference_feedback_manager.cc ...", "INFO: Created TensorFlow
# Lite XNNPACK delegate for CPU.". GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL and ABSL_MIN_LOG_LEVEL do
# not reach all of it (tried with mediapipe 0.10.21), so fd 2 passes through a filter thread that
# drops exactly those INFO/WARNING lines and forwards everything else (errors, Python's output),
# unless -v. Progress bars (trtalk.progress) are drawn on the real terminal, around the pipe.
_NATIVE_NOISE = re.compile(r"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |INFO: Created TensorFlow Lite |"
                           r"WARNING: All log messages before absl::InitializeLog\(\) |"
                           # mediapipe 0.10.21's bindings on protobuf >= 5 (requirements-agents.txt
                           # upgrades it; face detection and mesh are unchanged): one harmless line
                           r"AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'$")


#: A line the stderr filter never forwards: `_OrderedStdout` writes it to fd 2 and waits until the
#: filter has read it, so everything written to stderr before it has reached the terminal.
_SYNC = b"\x1etrtalk-stderr-sync\n"


class _OrderedStdout:
    """sys.stdout while fd 2 runs through the filter thread, when both reach the same file (a
    terminal, or one pipe for ``2>&1``): each write first waits until the filter has forwarded all
    stderr written before it, then goes out at once, so stdout and the log keep program order."""

    def __init__(self, out: typing.TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._seen = threading.Condition()
        self._sent = 0  # sync lines written to fd 2
        self._read = 0  # sync lines the filter thread has read
        self._ended = False  # the filter thread has stopped: nothing to wait for

    def synced(self) -> None:
        """Called by the filter thread when it reads a sync line."""
        with self._seen:
            self._read += 1
            self._seen.notify_all()

    def ended(self) -> None:
        """Called by the filter thread when it stops (end of the block, or its output failed)."""
        with self._seen:
            self._ended = True
            self._seen.notify_all()

    def write(self, text: str) -> int:
        with self._lock:
            try:
                if not self._ended:
                    sys.stderr.flush()
                    os.write(2, _SYNC)
                    self._sent += 1
            except (OSError, ValueError):
                pass
            with self._seen:  # bounded: a stuck filter delays output, never blocks it
                self._seen.wait_for(lambda: self._ended or self._read >= self._sent, timeout=2.0)
            n = self._out.write(text)
            self._out.flush()
            return n

    def __getattr__(self, name: str) -> typing.Any:
        return getattr(self._out, name)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool) -> Iterator[None]:
    """With ``enabled``, drop native libraries' INFO/WARNING lines from fd 2 for the block; stdout
    stays in order with the forwarded lines where both go to one file (`_OrderedStdout`)."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, ValueError):
        yield
        return
    stdout = sys.stdout
    try:
        ordered = _OrderedStdout(stdout) if _same_file(stdout.fileno(), saved) else None
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor
        ordered = None

    def pump() -> None:
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                for line in pipe:
                    if line.endswith(_SYNC):  # after a native partial line, if any: pass that on
                        if len(line) > len(_SYNC):
                            os.write(saved, line[:-len(_SYNC)])
                        if ordered is not None:
                            ordered.synced()
                    elif not _NATIVE_NOISE.match(line.decode(errors="replace")):
                        os.write(saved, line)
        finally:
            if ordered is not None:
                ordered.ended()

    from trtalk import progress

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    terminal = open(saved, "w", buffering=1, closefd=False, encoding=sys.stderr.encoding or "utf-8",
                    errors="replace")
    progress.set_terminal(terminal)
    if ordered is not None:
        stdout.flush()
        sys.stdout = ordered  # type: ignore[assignment]
    try:
        yield
    finally:
        if ordered is not None and sys.stdout is ordered:
            sys.stdout = stdout
        progress.set_terminal(None)
        terminal.close()
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    try:
        # SIGINT and SIGTERM take the same clean unwinding path (trtalk.signals).
        with _quiet_native_stderr(not args.verbose), on_signals():
            return int(args.func(args) or 0)
    except TrtalkError as exc:
        print(f"trtalk: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        from trtalk.fsutil import disk_full, disk_full_error

        if not disk_full(exc):
            raise
        # a writer without its own handling (atomic files convert theirs): still one line
        print(f"trtalk: error: {disk_full_error(getattr(exc, 'filename', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if getattr(exc, "signum", None) == signal.SIGTERM else "SIGINT"
        print(f"trtalk: interrupted ({name}); unfinished output was discarded", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
