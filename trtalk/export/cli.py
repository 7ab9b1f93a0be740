"""`trtalk export`: checkpoint -> four ONNX graphs (+ TensorRT engines) + manifest.json."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from trtalk.export.exporter import MODCONV_CHOICES, TARGETS, ExportOptions, describe, export_pcavs
from trtalk.export.onnx_export import PRECISIONS

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the PC-AVS stages to ONNX (and TensorRT engines)",
        description="Write identity/pose/audio/generator ONNX graphs (dynamic batch, float32 I/O) "
                    "and manifest.json to --out; with --target tensorrt-rtx also build engines "
                    "into --out/engines. Without --checkpoint, seeded random weights are exported "
                    "(for tests and benchmarks; recorded in the manifest).")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="official checkpoint folder or trtalk .safetensors (default: random weights)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="graph precision (fp16: fp16 weights/activations, fp32 I/O); default fp16")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the engines (default 8)")
    p.add_argument("--target", choices=TARGETS, default="onnx", help="what to produce (default onnx)")
    p.add_argument("--modconv", choices=MODCONV_CHOICES, default="decomposed",
                   help="modulated-conv form in the generator graph (plugin: custom trtalk::ModulatedConv2d nodes for the TensorRT plugin; fp32, datacenter TensorRT)")
    p.add_argument("--compute-capability", default=None,
                   help="TensorRT-RTX target GPU: sm75, sm80, sm86, sm89, sm120, sm121 "
                        "(default: the local GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (no --checkpoint)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    opts = ExportOptions(out=args.out, checkpoint=args.checkpoint, precision=args.precision,
                         max_batch=args.max_batch, target=args.target, modconv=args.modconv,
                         seed=args.seed, compute_capability=args.compute_capability)
    manifest = export_pcavs(opts)
    print(describe(manifest))
    print(f"wrote {args.out / 'manifest.json'}")
    return 0
