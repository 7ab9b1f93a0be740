"""The built-in warp avatar: a dense mesh warp of the photo (`trtalk.warp` is its renderer), no
trained weights, nothing downloaded. Its runtime adapter is `runtime.WarpFamily`; `SPEC` is what
`trtalk.families.registry` lists."""

from __future__ import annotations

from trtalk.families.spec import FamilySpec
from trtalk.families.warp import runtime

__all__ = ["SPEC"]

SPEC = FamilySpec(
    name="warp",
    title="warp avatar",
    capabilities=runtime.CAPABILITIES,
    open=runtime.open_warp,
    export_entry="trtalk.export.warp:export_warp",
    bench_note="the warp avatar has no network stages to compare across backends (one grid_sample, "
               "`trtalk export --model warp`); time it end to end with "
               "`python benchmarks/warp_fps.py --backends torch onnxruntime`",
)
