"""`trtalk convert` (an official checkpoint folder -> one safetensors file) and `trtalk models`
(every model family, its capabilities and where it came from)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option
from trtalk.families import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    """Options of `trtalk convert`."""

    checkpoint: Path = option(positional=True,
                              help="official PC-AVS or PD-FGC checkpoint folder (or a trtalk .safetensors file)")
    output: Path = option(short="-o", help="output .safetensors path")


@dataclass(frozen=True)
class ModelsOptions:
    """Options of `trtalk models`."""

    json: bool = option(False, help="print JSON (one object per family) instead of a table")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "models", ModelsOptions, _models,
                help="list the model families (built-in and plugins) and their capabilities",
                description="Every model family --model accepts: its name, title, where it came "
                            "from (built-in, or the plugin package of a `trtalk.families` entry "
                            "point), its stages and its capabilities.",
                examples=(("trtalk models", "a table"), ("trtalk models --json", "one JSON object per family")))
    add_command(sub, "convert", ConvertOptions, _run,
                help="convert an official PC-AVS or PD-FGC checkpoint folder to safetensors",
                description="Read checkpoints/demo/latest_net_{G,V,E,A_sync}.pth (PC-AVS) or "
                            "{appearance,motion,audio,generator}_model.pth (PD-FGC) and write one "
                            ".safetensors file, its family in the metadata, that every trtalk "
                            "command accepts as --checkpoint.",
                examples=(("trtalk convert PC-AVS/checkpoints/demo -o pcavs.safetensors", "PC-AVS"),
                          ("trtalk convert PD-FGC/checkpoints -o pdfgc.safetensors", "PD-FGC")))


def _run(opts: ConvertOptions) -> int:
    from trtalk.fsutil import output_parent

    with output_parent(opts.output):  # created when missing, removed again on failure
        out = registry.convert(opts.checkpoint, opts.output)
    print(f"wrote {out}")
    return 0


def _models(opts: ModelsOptions) -> int:
    specs = registry.all_specs()
    if opts.json:
        print(json.dumps({"families": [s.describe() for s in specs.values()],
                          "problems": list(registry.problems())}, indent=2))
        return 0
    for spec in specs.values():
        caps = spec.capabilities
        flags = [name for name, on in (("visual mouth", caps.visual_mouth), ("eye controls", caps.eye_controls),
                                       ("emotion controls", caps.emotion_controls),
                                       ("needs a checkpoint", caps.needs_checkpoint),
                                       ("exportable", caps.exportable)) if on]
        print(f"{spec.name:8s} {spec.title} [{spec.origin}]")
        print(f"         stages: {', '.join(spec.stages) or '-'}; backends: {', '.join(caps.backends)}; "
              f"devices: {', '.join(caps.devices)}; noise: {', '.join(caps.noise) or '-'}")
        print(f"         {', '.join(flags) or '-'}")
    for p in registry.problems():
        print(f"left out: {p}")
    return 0
