"""`trtalk export`: checkpoint -> four ONNX graphs (+ TensorRT engines) + manifest.json."""

from __future__ import annotations

import argparse
import logging

from trtalk.configcli import add_command
from trtalk.export.exporter import ExportOptions, describe, export_pcavs

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "export", ExportOptions, _run,
        help="export the PC-AVS stages to ONNX (and TensorRT engines)",
        description="Write identity/pose/audio/generator ONNX graphs (dynamic batch, float32 I/O) "
                    "and manifest.json to --out; with --target tensorrt-rtx also build engines "
                    "into --out/engines. Without --checkpoint, seeded random weights are exported "
                    "(for tests and benchmarks; recorded in the manifest).")


def _run(opts: ExportOptions) -> int:
    manifest = export_pcavs(opts)
    print(describe(manifest))
    print(f"wrote {opts.out / 'manifest.json'}")
    return 0
