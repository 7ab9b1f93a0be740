"""What every model family's stages are made of: named, fixed I/O (`TensorSpec`, `StageSpec`)
with one dynamic batch axis, the fp32-I/O wrapper of a reduced-precision stage (`CastIO`), the
exact inference rewrites a stage gets (`fuse_options`) and deterministic example inputs.

A *stage* is one network call of the per-frame pipeline; a family (`trtalk.families`) names its
stages and builds their modules; the exporter, manifest, engine builder, engine cache, AOT
packages and runner take any family's through `trtalk.export.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trtalk.models.fuse import FuseOptions

BATCH = "batch"  # the symbolic name of the dynamic batch axis in every graph and manifest


@dataclass(frozen=True)
class TensorSpec:
    """One named stage input or output; ``shape[0]`` is the symbolic batch ``"batch"``."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch axis set to ``batch``."""
        return tuple(batch if s == BATCH else int(s) for s in self.shape)


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


class CastIO(nn.Module):
    """Runs ``inner`` in ``compute_dtype`` with float32 inputs and outputs (casts inside the graph)."""

    def __init__(self, inner: nn.Module, compute_dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.compute_dtype = compute_dtype

    def forward(self, *args: torch.Tensor):
        out = self.inner(*(a.to(self.compute_dtype) for a in args))
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


def fuse_options(modconv: str, fuse: FuseOptions | bool | None = None) -> FuseOptions | None:
    """The exact rewrites (`trtalk.models.fuse`) a stage gets: ``fuse`` None means all of them
    for the decomposed form (``modconv`` "decomposed" or "auto") and none otherwise, so
    ``"grouped"`` stays the official reference; True/False force all/none."""
    if fuse is None:
        fuse = modconv in ("decomposed", "auto")  # "auto" resolves to "decomposed"
    if fuse is True:
        return FuseOptions()
    return fuse or None


def example_inputs(spec: StageSpec, batch: int = 2, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs in the stage's ranges: images and styles in [-1, 1], mel in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        x = torch.rand(t.concrete(batch), generator=gen)
        if t.name == "mel":
            pass
        elif t.name == "id_map":
            x = x * 2.0  # pooled post-ReLU-ish activations: non-negative, O(1)
        else:
            x = x * 2.0 - 1.0
        out.append(x.to(dtype))
    return tuple(out)
