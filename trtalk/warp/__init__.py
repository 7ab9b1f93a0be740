"""trtalk.warp: a talking avatar that needs no trained weights.

A photo's mediapipe face mesh is deformed (jaw and lips from the audio, a
rigid head rotation from a pose video or a built-in idle motion) and the
photo is warped piecewise-affinely over the mesh triangles by a tiny torch
module (:class:`WarpNet`) that also exports to ONNX. It is a model family of
the one pipeline (`trtalk.families.warp.runtime.WarpFamily`): ``trtalk demo``,
``trtalk render --model warp`` and ``trtalk stream --model warp`` drive it.

Importing this package is cheap; torch, mediapipe and scipy load on use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WarpAvatar", "AvatarConfig", "MouthConfig", "WarpNet", "WarpRenderConfig", "WarpRenderer",
           "mouth_params"]

_WHERE = {
    "WarpAvatar": "trtalk.warp.avatar", "AvatarConfig": "trtalk.warp.avatar",
    "MouthConfig": "trtalk.warp.drive", "mouth_params": "trtalk.warp.drive",
    "WarpNet": "trtalk.warp.net",
    "WarpRenderConfig": "trtalk.warp.render", "WarpRenderer": "trtalk.warp.render",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'trtalk.warp' has no attribute {name!r}")
