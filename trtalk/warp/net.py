"""The warp "network": a tiny torch module that moves pixels, exportable to plain ONNX.

It has no trained weights: the source crop is resampled along a backward
grid (computed by :class:`trtalk.warp.avatar.Avatar`) and the open mouth is
shaded over. Keeping it an ``nn.Module`` puts the warp avatar on the same
engine path as the learned models: torch eager, ONNX Runtime, or an
ONNX-to-TensorRT build.

Inputs (all float32, NCHW / NHWC as torch's ``grid_sample`` wants):
    ``source`` (1, 3, H, W) RGB in [0, 1] (the avatar's whole frame); ``grid`` (1, h, w, 2) in
    [-1, 1] over the source (align_corners=False); ``cavity`` and ``teeth`` (1, 1, h, w) in
    [0, 1]. The grid covers the region of the frame that moves (h x w, at most H x W).
Output: ``frame`` (1, 3, h, w) RGB in [0, 1]: that region.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trtalk.threads import configure_ort

logger = logging.getLogger(__name__)

INPUT_NAMES = ("source", "grid", "cavity", "teeth")
OUTPUT_NAMES = ("frame",)
ONNX_OPSET = 17  # GridSample needs opset >= 16


class WarpNet(nn.Module):
    """``frame = lerp(grid_sample(source, grid), mouth_colour, cavity)``.

    The cavity colour is a very dark red-brown (its shading comes from the soft cavity mask: the
    lip edges blend into it); the teeth rows are off-white, dimmed by the teeth mask towards the
    corners and on the lower row.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cavity_rgb", torch.tensor([0.09, 0.025, 0.03]).view(1, 3, 1, 1))
        self.register_buffer("teeth_rgb", torch.tensor([0.86, 0.83, 0.78]).view(1, 3, 1, 1))

    def forward(self, source: torch.Tensor, grid: torch.Tensor, cavity: torch.Tensor,
                teeth: torch.Tensor) -> torch.Tensor:
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mouth = self.cavity_rgb + teeth * (self.teeth_rgb - self.cavity_rgb)
        return (warped + cavity * (mouth - warped)).clamp(0.0, 1.0)


def export_onnx(path: str | Path, size: int | tuple[int, int] = 256,
                grid_hw: tuple[int, int] | None = None) -> Path:
    """Write :class:`WarpNet` as an ONNX model (opset 17) for source frames of ``size`` (a side or
    (H, W)) and grids of ``grid_hw`` (default: the source's size); returns the path."""
    path = Path(path)
    net = WarpNet().eval()
    args = example_inputs(size, grid_hw=grid_hw)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript
        # (not a dependency); for this graph both give the same plain ONNX.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, args, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            opset_version=ONNX_OPSET, dynamo=False,
        )
    logger.debug("exported the warp network to %s", path)
    return path


def example_inputs(size: int | tuple[int, int] = 256, seed: int = 0,
                   grid_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Random but plausible inputs: a near-identity grid (over the source's top-left ``grid_hw``
    region), soft masks."""
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if isinstance(size, int) else size
    gh, gw = grid_hw or (h, w)
    source = torch.rand(1, 3, h, w, generator=g)
    lx = (torch.arange(gw, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    ly = (torch.arange(gh, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
    gy, gx = torch.meshgrid(ly, lx, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None] + 0.05 * torch.randn(1, gh, gw, 2, generator=g)
    cavity = torch.rand(1, 1, gh, gw, generator=g)
    teeth = torch.rand(1, 1, gh, gw, generator=g)
    return source, grid, cavity, teeth


class TorchWarp:
    """Runs :class:`WarpNet` in torch; ``__call__`` takes numpy, returns HxWx3 uint8."""

    def __init__(self, source_rgb: np.ndarray) -> None:
        # Thread count is a process-wide torch setting, so the front end chooses it (the demo CLI
        # uses one thread: see trtalk.warp.cli), never this library class.
        self.net = WarpNet().eval()
        self.source = torch.from_numpy(np.ascontiguousarray(source_rgb.transpose(2, 0, 1))).float().div(255.0)[None]

    def __call__(self, grid: np.ndarray, cavity: np.ndarray, teeth: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.net(self.source, torch.from_numpy(grid)[None], torch.from_numpy(cavity)[None, None],
                           torch.from_numpy(teeth)[None, None])
        return _to_uint8(out.numpy())


class OrtWarp:
    """Runs the exported ONNX graph in ONNX Runtime (CPU); same interface as :class:`TorchWarp`."""

    def __init__(self, source_rgb: np.ndarray, onnx_path: str | Path | None = None, threads: int = 1,
                 grid_hw: tuple[int, int] | None = None) -> None:
        import onnxruntime as ort

        if onnx_path is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="trtalk-warp-")
            onnx_path = export_onnx(Path(self._tmp.name) / "warp.onnx", tuple(source_rgb.shape[:2]), grid_hw)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Spinning workers would starve the per-frame numpy/mediapipe work (trtalk.threads).
        configure_ort(opts, threads)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.source = np.ascontiguousarray(source_rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0

    def __call__(self, grid: np.ndarray, cavity: np.ndarray, teeth: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {"source": self.source, "grid": grid[None], "cavity": cavity[None, None],
                                         "teeth": teeth[None, None]})
        return _to_uint8(out)


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    return np.rint(chw[0].transpose(1, 2, 0) * 255.0).astype(np.uint8)
