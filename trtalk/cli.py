"""`trtalk` command line: one subcommand per job, each registered by the module that owns it.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=callable(args) -> int`` as default. User errors (`TrtalkError`) print one line on stderr
and exit with status 2; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from trtalk import __version__, threads
from trtalk.errors import TrtalkError

# Idle OpenMP threads must sleep, and the OpenMP runtime reads that once, when torch loads: so
# before any subcommand module (they import torch) is imported. See trtalk/threads.py.
threads.prepare_env()

# Modules that register subcommands, in the order `trtalk --help` lists them.
SUBCOMMAND_MODULES = (
    "trtalk.runtime.render_cli",
    "trtalk.models.cli",
    "trtalk.export.cli",
    "trtalk.runtime.stream_cli",
    "trtalk.bench.cli",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except TrtalkError as exc:
        print(f"trtalk: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("trtalk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
