"""`trtalk convert`: official checkpoint folder -> one safetensors file."""

from __future__ import annotations

import argparse
import logging

from trtalk.models.checkpoint import convert

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official PC-AVS checkpoint folder to safetensors",
                       description="Read checkpoints/demo/latest_net_{G,V,E,A_sync}.pth and write one "
                                   ".safetensors file that every trtalk command accepts as --checkpoint.")
    p.add_argument("checkpoint", help="official checkpoint folder (or a trtalk .safetensors file)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = convert(args.checkpoint, args.output)
    print(f"wrote {out}")
    return 0
