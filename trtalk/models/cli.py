"""`trtalk convert`: official checkpoint folder -> one safetensors file."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option
from trtalk.models.checkpoint import convert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    """Options of `trtalk convert`."""

    checkpoint: Path = option(positional=True,
                              help="official PC-AVS or PD-FGC checkpoint folder (or a trtalk .safetensors file)")
    output: Path = option(short="-o", help="output .safetensors path")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "convert", ConvertOptions, _run,
                help="convert an official PC-AVS or PD-FGC checkpoint folder to safetensors",
                description="Read checkpoints/demo/latest_net_{G,V,E,A_sync}.pth (PC-AVS) or "
                            "{appearance,motion,audio,generator}_model.pth (PD-FGC) and write one "
                            ".safetensors file, its family in the metadata, that every trtalk "
                            "command accepts as --checkpoint.")


def _run(opts: ConvertOptions) -> int:
    from trtalk.fsutil import output_parent

    with output_parent(opts.output):  # created when missing, removed again on failure
        out = convert(opts.checkpoint, opts.output)
    print(f"wrote {out}")
    return 0
