"""The warp avatar's frame renderer: (open, rounding, rotation) -> an RGB frame of one photo.

Per frame: :meth:`WarpAvatar.deform` -> :meth:`WarpAvatar.warp_inputs` -> the warp network (torch or
ONNX Runtime) on the region that moves -> that region written into a copy of the photo's frame.
The output is the photo's own frame (its long side ``AvatarConfig.size``), so there is nothing to
paste back: ``paste_back`` is accepted and changes nothing. The frame loop around it is the
pipeline's (`trtalk.families.warp.runtime.WarpFamily` drives this renderer), as for every model family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from trtalk.errors import TrtalkError
from trtalk.warp.avatar import AvatarConfig, WarpAvatar, rotation_clamped
from trtalk.warp.drive import MouthConfig

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class WarpRenderConfig:
    """Rendering options. ``backend``: "torch" or "onnxruntime" for the warp network.
    ``paste_back``: kept for old callers; the frames are the photo's own frame either way."""

    fps: float = 25.0
    paste_back: bool = False
    backend: str = "torch"
    #: onnxruntime: this exported warp graph (`trtalk export --model warp`), else one per avatar
    onnx_path: str | None = None
    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    mouth: MouthConfig = field(default_factory=MouthConfig)


def detect_avatar_mesh(photo_rgb: np.ndarray, name: str) -> np.ndarray:
    """The largest face's 468x3 mesh in ``photo_rgb``; TrtalkError when there is none."""
    from trtalk.face import FaceMeshDetector

    with FaceMeshDetector(static_image_mode=True, max_num_faces=2) as det:
        faces = det.detect3d(photo_rgb)
    if not faces:
        raise TrtalkError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
    if len(faces) > 1:
        logger.info("%s has %d faces; animating the largest", name, len(faces))
    return faces[0]


class WarpRenderer:
    """Turns (open, rounding, rotation) into an RGB uint8 frame of one avatar photo.

    Frames are the photo's frame (``avatar.crop``, H x W: the photo at the configured size).
    """

    def __init__(self, photo_rgb: np.ndarray, cfg: WarpRenderConfig = WarpRenderConfig(),
                 name: str = "the avatar photo", mesh: np.ndarray | None = None) -> None:
        if cfg.backend not in BACKENDS:
            raise TrtalkError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.cfg = cfg
        if mesh is None:
            mesh = detect_avatar_mesh(photo_rgb, name)
        self.avatar = WarpAvatar(photo_rgb, mesh, cfg.avatar, name)
        x0, y0, x1, y1 = self.avatar.face_roi
        if cfg.backend == "torch":
            from trtalk.warp.net import TorchWarp

            self.net: Callable[..., np.ndarray] = TorchWarp(self.avatar.crop)
        else:
            from trtalk.warp.net import OrtWarp

            self.net = OrtWarp(self.avatar.crop, onnx_path=cfg.onnx_path, grid_hw=(y1 - y0, x1 - x0))

    def frame(self, open_: float, rounding: float, rotation: np.ndarray, eye_closure: float = 0.0,
              placement: tuple[float, float, float] | None = None) -> np.ndarray:
        """One frame: mouth ``open_``/``rounding`` in [0, 1], head ``rotation`` (3x3), ``eye_closure``
        in [0, 1] (0: the photo's eyes, bit-identical to a frame without the argument; 1: shut),
        ``placement`` (dx, dy, log scale) of the head (`trtalk.warp.placement`; None: in place)."""
        rot = rotation_clamped(rotation, self.cfg.avatar)
        closure = float(np.clip(eye_closure, 0.0, 1.0))
        pts = self.avatar.deform(open_, rounding, rot, closure)
        if placement is not None:
            pts = self.avatar.place(pts, (placement[0], placement[1]), placement[2])
        w = self.avatar.warp_inputs(pts, open_, closure)
        out = self.avatar.crop.copy()
        if w.outer is not None:
            # The moving region around the face: a plain bilinear resampling (what the network
            # does there too, as it has nothing to shade).
            x0, y0, x1, y1 = w.outer_roi
            out[y0:y1, x0:x1] = cv2.remap(self.avatar.crop, w.outer, None, cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = w.roi
        out[y0:y1, x0:x1] = self.net(w.grid, w.cavity, w.teeth)
        return out
