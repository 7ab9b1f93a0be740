"""The frame step: written once, called by render, stream, demo and bench.

For a batch of output frames k:

    mouth  = family.mouth(mel windows, k)            # audio window -> mouth code
    pose   = the pose path's codes (family.pose)     # pose sample -> pose code (smoothed, held)
    crops  = family.generate(avatar, mouth, pose)    # style composition + generator
    frames = compose(crops)                          # paste-back, layout, "random weights" stamp

The pipeline (`trtalk.runtime.pipeline`) decides which frames are due and feeds the step; the
family (`trtalk.families.base`) owns the networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from trtalk.errors import TrtalkError
from trtalk.families.base import Avatar, ModelFamily

LAYOUTS = ("generated", "side-by-side")
RANDOM_WEIGHTS_NOTE = "random weights - no checkpoint"


@dataclass(frozen=True)
class Background:
    """A frame to paste the generated crop into, and the map from its pixels to the crop
    (None: show the frame as it is, e.g. a camera before the first face was seen)."""

    frame: np.ndarray
    crop_m: np.ndarray | None


def stamp(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``frame`` with ``text`` on its bottom edge (white on a darkened band)."""
    out = np.ascontiguousarray(frame).copy()
    h, w = out.shape[:2]
    scale = max(0.35, w / 900)
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y0 = h - th - base - 6
    out[y0:] = out[y0:] // 3
    cv2.putText(out, text, (4, h - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


class FrameStep:
    """One avatar's frame step over a family (see the module docstring).

    ``layout``: "generated" (the frame only) or "side-by-side" (avatar | frame | pose source).
    ``paste_back``: the crop goes back into the background frame given per frame (else the
    avatar's photo). Frames of a family on random weights are stamped so.
    """

    def __init__(self, family: ModelFamily, avatar: Avatar, *, layout: str = "generated",
                 paste_back: bool = False) -> None:
        if layout not in LAYOUTS:
            raise TrtalkError(f"unknown layout {layout!r}; choose {' or '.join(LAYOUTS)}")
        self.family = family
        self.avatar = avatar
        self.layout = layout
        self.paster = None
        if paste_back:
            from trtalk.face import PasteBack

            self.paster = PasteBack(crop_size=family.output_size)

    def infer(self, frames: Sequence[int], mel: torch.Tensor, pose: torch.Tensor,
              mouth: torch.Tensor | None = None) -> np.ndarray:
        """Generated crops B x H x W x 3 uint8 of ``frames`` from their mel windows and pose codes
        (``mouth``: mouth codes from elsewhere, `trtalk.runtime.mouth_path`; the mel is then unused)."""
        with torch.no_grad():
            if mouth is not None:
                return self.family.generate(self.avatar, mouth, pose)
            return self.family.synthesize(self.avatar, mel, frames, pose)

    def compose(self, crop: np.ndarray, background: Background | None = None,
                pose_panel: np.ndarray | None = None, mouth_panel: np.ndarray | None = None) -> np.ndarray:
        """The output frame of one generated crop (side by side: avatar | frame | mouth source,
        when it is not the pose source | pose source)."""
        out = crop
        if self.paster is not None:
            bg = background or Background(self.avatar.image, self.avatar.crop_m)
            out = bg.frame if bg.crop_m is None else self.paster(bg.frame, crop, bg.crop_m)
        if self.layout == "side-by-side":
            from trtalk.media.frames import composite_side_by_side

            panel = pose_panel if pose_panel is not None else self.avatar.crop
            panels = [self.avatar.crop, out, panel] if mouth_panel is None else \
                [self.avatar.crop, out, mouth_panel, panel]
            out = composite_side_by_side(panels,
                                         height=min(512, out.shape[0]) if self.paster else crop.shape[0])
        if self.family.random_weights:
            out = stamp(out, RANDOM_WEIGHTS_NOTE)
        return out

    def __call__(self, frames: Sequence[int], mel: torch.Tensor, pose: torch.Tensor,
                 backgrounds: Sequence[Background | None] | None = None,
                 pose_panels: Sequence[np.ndarray | None] | None = None, *,
                 mouth: torch.Tensor | None = None,
                 mouth_panels: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        crops = self.infer(frames, mel, pose, mouth)
        n = len(crops)
        bgs = backgrounds if backgrounds is not None else [None] * n
        panels = pose_panels if pose_panels is not None else [None] * n
        mpanels = mouth_panels if mouth_panels is not None else [None] * n
        return [self.compose(c, b, p, m) for c, b, p, m in zip(crops, bgs, panels, mpanels)]
