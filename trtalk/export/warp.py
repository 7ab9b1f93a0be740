"""`trtalk export --model warp`: the warp avatar's two graphs and their manifest (see
`trtalk.families.warp.export` for what they are and why the rest is not exported)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from trtalk import __version__
from trtalk.errors import TrtalkError
from trtalk.families.warp.export import FAMILY, MouthScore
from trtalk.fsutil import atomic_output

log = logging.getLogger(__name__)


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


