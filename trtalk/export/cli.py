"""`trtalk export`: checkpoint -> four ONNX graphs (+ TensorRT engines) + manifest.json, or
(``--target aot``) four AOTInductor packages in the engine cache."""

from __future__ import annotations

import argparse
import logging

from trtalk.configcli import add_command
from trtalk.export.exporter import ExportOptions, describe, export_pcavs

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "export", ExportOptions, _run,
        help="export the PC-AVS stages to ONNX (and TensorRT engines) or AOTInductor packages",
        description="Write identity/pose/audio/generator ONNX graphs (dynamic batch, float32 I/O) "
                    "and manifest.json to --out; with --target tensorrt-rtx also build engines "
                    "into --out/engines. With --target aot, build one torch.export + AOTInductor "
                    "package per stage into the engine cache instead (for GPUs TensorRT-RTX does "
                    "not run on, and the CPU; backend aot loads them). Without --checkpoint, "
                    "seeded random weights are exported (for tests and benchmarks; recorded in "
                    "the manifest).")


def _run(opts: ExportOptions) -> int:
    if opts.checkpoint is not None:
        from trtalk.models.checkpoint import detect_family

        if detect_family(opts.checkpoint, fallback="pcavs") == "pdfgc":
            return _run_pdfgc(opts)
    if opts.target == "aot":
        from trtalk.export.aot import describe_aot, export_aot

        print(describe_aot(export_aot(opts)))
        return 0
    manifest = export_pcavs(opts)
    print(describe(manifest))
    print(f"wrote {opts.out / 'manifest.json'}")  # type: ignore[operator]
    return 0


def _run_pdfgc(opts: ExportOptions) -> int:
    """A PD-FGC checkpoint: its four stage graphs (`trtalk.export.pdfgc_stages`), fp32 ONNX only
    for now (no manifest, engines or AOT packages yet)."""
    from trtalk.errors import TrtalkError
    from trtalk.export.pdfgc_stages import export_pdfgc
    from trtalk.fsutil import output_folder
    from trtalk.models.pdfgc import load_pdfgc

    opts.validate()
    if opts.target != "onnx" or opts.precision != "fp32" or opts.modconv != "decomposed":
        raise TrtalkError("a PD-FGC checkpoint exports as fp32 ONNX graphs for now: use --target onnx "
                          "--precision fp32 (and the default --modconv)")
    assert opts.out is not None  # validate() asks for it
    model = load_pdfgc(opts.checkpoint)
    with output_folder(opts.out, "--out") as out:
        records = export_pdfgc(model, out, max_batch=opts.max_batch)
    for stage, rec in records.items():
        print(f"{stage}: {out / rec.file} ({rec.bytes / 1e6:.1f} MB)")
    return 0
