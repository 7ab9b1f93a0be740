"""The warp avatar's export folder (`trtalk export --model warp`, `trtalk.export.warp`): what of
it is a network, as ONNX.

The warp avatar has no trained image network. Two parts of its frame path are tensor graphs:

- ``warp.onnx``: `trtalk.warp.net.WarpNet` (grid_sample of the photo along the backward warp
  field, the mouth cavity and teeth shaded in), with dynamic frame and grid sizes, so one file
  serves every avatar; ``--backend onnxruntime`` with ``--checkpoint DIR`` runs it (without a
  folder it exports the same graph per avatar into a temporary folder, in well under a second).
- ``mouth.onnx``: the shipped audio-to-mouth model's score (`trtalk.warp.drive.MouthModel`: a mel
  window, B x 20 x 80 -> pooled bands -> 121 linear weights -> a score B). The score's monotone
  table (score -> opening), the pause closure and the attack/release follower are a few numpy
  lines of the mouth follower, not a network; they stay in Python.

Everything else (face mesh tracking, the mesh deformation and rasterising the warp field) is
geometry, not a network, and is not exported. ``manifest.json`` says so (``"family": "warp"``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from trtalk.errors import TrtalkError

FAMILY = "warp"
GRAPHS = ("warp", "mouth")


class MouthScore(nn.Module):
    """The `MouthModel`'s linear score as a module: mel window B x 20 x 80 (time x mel bins,
    float32) -> score B (``features @ weight + bias``; `trtalk.warp.drive.window_features`)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.rows = tuple(int(r) for r in model.rows)
        self.bands = int(model.bands)
        self.register_buffer("weight", torch.as_tensor(model.weight, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(float(model.bias), dtype=torch.float32))

    def forward(self, window_tf: torch.Tensor) -> torch.Tensor:
        w = window_tf[:, self.rows[0]:self.rows[1], :]
        b, t, f = w.shape
        pooled = w.reshape(b, t, self.bands, f // self.bands).mean(-1)
        return pooled.reshape(b, t * self.bands) @ self.weight + self.bias


def warp_graph(folder: str | os.PathLike) -> Path:
    """``warp.onnx`` of a warp export folder, checked against its manifest (TrtalkError if not)."""
    folder = Path(folder)
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrtalkError(f"cannot read {folder / 'manifest.json'}: {exc}") from None
    if m.get("family") != FAMILY or "warp" not in m.get("graphs", {}):
        raise TrtalkError(f"{folder} is not a warp avatar export (family {m.get('family')!r}); "
                          f"make one with `trtalk export --model warp --out {folder}`")
    rec = m["graphs"]["warp"]
    path = folder / rec["file"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != rec["sha256"]:
        raise TrtalkError(f"{path} is missing or does not match its manifest sha256; re-export")
    return path
