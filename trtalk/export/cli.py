"""`trtalk export`: checkpoint (PC-AVS or PD-FGC) -> four ONNX graphs (+ TensorRT engines) + manifest.json, or
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
        help="export a model's stages to ONNX (and TensorRT engines) or AOTInductor packages",
        description="Write the four stage ONNX graphs (PC-AVS: identity/pose/audio/generator; "
                    "PD-FGC: identity/motion/audio/generator, detected from --checkpoint or named "
                    "by --model for random weights) (dynamic batch, float32 I/O) "
                    "and manifest.json to --out; with --target tensorrt-rtx also build engines "
                    "into --out/engines. With --target aot, build one torch.export + AOTInductor "
                    "package per stage into the engine cache instead (for GPUs TensorRT-RTX does "
                    "not run on, and the CPU; backend aot loads them). Without --checkpoint, "
                    "seeded random weights are exported (for tests and benchmarks; recorded in "
                    "the manifest; stamped wherever it runs). The folder is a --checkpoint "
                    "everywhere, used as it is. --model warp: its warp and mouth-score graphs (the "
                    "rest is geometry). --model-config small: under a minute of CPU.",
        basic=("--out", "--checkpoint", "--model", "--target", "--precision", "--max-batch",
               "--model-config", "--device"),
        examples=(("trtalk export --checkpoint pcavs.safetensors --out export/",
                   "four ONNX graphs and manifest.json in export/"),
                  ("trtalk export --checkpoint pcavs.safetensors --target aot --device cuda",
                   "AOTInductor packages in the engine cache (render --backend aot uses them)"),
                  ("trtalk export --model-config small --precision fp32 --out /tmp/small",
                   "the small test model on random weights")))


def _run(opts: ExportOptions) -> int:
    from trtalk.families import registry

    spec = registry.get(opts.model) if opts.model is not None else None
    if spec is not None and spec.export_entry:
        return _run_own(opts, spec)
    if opts.target == "aot":
        from trtalk.export.aot import describe_aot, export_aot

        print(describe_aot(export_aot(opts)))
        return 0
    manifest = export_pcavs(opts)
    print(describe(manifest))
    print(f"wrote {opts.out / 'manifest.json'}")  # type: ignore[operator]
    return 0


def _run_own(opts: ExportOptions, spec) -> int:
    """A family without stages that exports its own graphs (``FamilySpec.export_entry``; the warp
    avatar: its two small graphs, `trtalk.families.warp.export`)."""
    import importlib

    from trtalk.errors import TrtalkError

    if opts.target != "onnx" or opts.checkpoint is not None or opts.model_config != "official":
        raise TrtalkError(f"--model {spec.name} exports its ONNX graphs only: drop --target, "
                          "--checkpoint and --model-config")
    if opts.out is None:
        raise TrtalkError(f"--model {spec.name} writes an export directory: add --out DIR")
    module, _, func = spec.export_entry.partition(":")
    m = getattr(importlib.import_module(module), func)(opts.out)
    for name, rec in m["graphs"].items():
        print(f"{name:9s} {rec['file']:12s} {rec['bytes'] / 1e3:8.1f} KB  "
              f"{', '.join(rec['inputs'])} -> {', '.join(rec['outputs'])}")
    print(f"wrote {opts.out / 'manifest.json'} (the warp network and the mouth model's score; the "
          f"rest of the warp avatar is geometry, not a network)")
    return 0
