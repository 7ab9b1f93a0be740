"""`trtalk` command line: one subcommand per job, each registered by the module that owns it.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=callable(args) -> int`` as default. User errors (`TrtalkError`) print one line on stderr
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
from collections.abc import Iterator

from trtalk import __version__, threads
from trtalk.errors import TrtalkError
from trtalk.signals import on_signals

# Idle OpenMP threads must sleep, and the OpenMP runtime reads that once, when torch loads: so
# before any subcommand module (they import torch) is imported. See trtalk/threads.py.
threads.prepare_env()

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtalk", description="Real-time talking-face engine (PC-AVS).")
    parser.add_argument("--version", action="version", version=f"trtalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # mediapipe / absl / TensorFlow Lite are chatty at INFO.
    for noisy in ("absl", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# mediapipe's C++ side (absl logging before absl::InitializeLog, TensorFlow Lite) writes straight to
# file descriptor 2: "W0000 00:00:... inference_feedback_manager.cc ...", "INFO: Created TensorFlow
# Lite XNNPACK delegate for CPU.". GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL and ABSL_MIN_LOG_LEVEL do
# not reach it (tried with mediapipe 0.10.21), so `-q` passes fd 2 through a filter thread that
# drops exactly those INFO/WARNING lines and forwards everything else (errors, Python's output).
_NATIVE_NOISE = re.compile(r"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |INFO: Created TensorFlow Lite |"
                           r"WARNING: All log messages before absl::InitializeLog\(\) ")


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool) -> Iterator[None]:
    """With ``enabled``, drop native libraries' INFO/WARNING lines from fd 2 for the block."""
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

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_NOISE.match(line.decode(errors="replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    try:
        # SIGINT and SIGTERM take the same clean unwinding path (trtalk.signals).
        with _quiet_native_stderr(args.quiet), on_signals():
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
