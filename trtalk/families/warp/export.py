"""`trtalk export --model warp`: what of the warp avatar is a network, as ONNX.

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

import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from trtalk import __version__
from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output

log = logging.getLogger(__name__)

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


def export_warp(out: str | os.PathLike) -> dict:
    """Write ``warp.onnx``, ``mouth.onnx`` and ``manifest.json`` to ``out``; returns the manifest."""
    from trtalk.export.onnx_export import sha256_file
    from trtalk.warp.drive import MOUTH_MODEL_PATH, load_mouth_model
    from trtalk.warp.net import INPUT_NAMES, ONNX_OPSET, OUTPUT_NAMES, WarpNet, example_inputs

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    graphs: dict[str, dict] = {}
    dyn = {"source": {2: "height", 3: "width"}, "grid": {1: "grid_height", 2: "grid_width"},
           "cavity": {2: "grid_height", 3: "grid_width"}, "teeth": {2: "grid_height", 3: "grid_width"},
           "frame": {2: "grid_height", 3: "grid_width"}}
    mouth_model = load_mouth_model(MOUTH_MODEL_PATH)
    jobs = (("warp", WarpNet().eval(), example_inputs(64, grid_hw=(48, 40)), list(INPUT_NAMES),
             list(OUTPUT_NAMES), dyn),
            ("mouth", MouthScore(mouth_model).eval(), (torch.rand(2, 20, 80),), ["mel_window"], ["score"],
             {"mel_window": {0: "batch"}, "score": {0: "batch"}}))
    for name, module, args, ins, outs, axes in jobs:
        with atomic_output(out / f"{name}.onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, args, str(tmp), input_names=ins, output_names=outs,
                              opset_version=ONNX_OPSET, dynamic_axes=axes, dynamo=False)
        path = out / f"{name}.onnx"
        graphs[name] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                        "inputs": ins, "outputs": outs}
    manifest = {"format": "trtalk.export", "format_version": 1, "family": FAMILY,
                "checkpoint": {"path": str(MOUTH_MODEL_PATH.name), "sha256": sha256_file(MOUTH_MODEL_PATH),
                               "random_weights": False, "seed": None},
                "note": "warp.onnx: the warp network (grid_sample + mouth shading), dynamic sizes; "
                        "mouth.onnx: the audio-to-mouth model's linear score; the score table, "
                        "follower and all geometry stay in Python",
                "options": {"precision": "fp32", "opset": ONNX_OPSET},
                "versions": {"trtalk": __version__, "torch": torch.__version__},
                "graphs": graphs}
    with atomic_output(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("exported the warp avatar's networks to %s", out)
    return manifest


def warp_graph(folder: str | os.PathLike) -> Path:
    """``warp.onnx`` of a warp export folder, checked against its manifest (TrtalkError if not)."""
    from trtalk.export.onnx_export import sha256_file

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
    if not path.is_file() or sha256_file(path) != rec["sha256"]:
        raise TrtalkError(f"{path} is missing or does not match its manifest sha256; re-export")
    return path
