"""The frame step: written once, called by render, stream, demo and bench.

For a batch of output frames k:

    mouth  = family.mouth(state, mel windows, k)     # audio window -> mouth code
    pose   = the pose path's codes (family.pose)     # pose sample -> pose code (smoothed, held)
    crops  = family.generate(state, avatar, mouth, pose, k, camera)  # style composition + generator
    frames = compose(crops)                          # paste-back, layout, "random weights" stamp

The pipeline (`trtalk.runtime.pipeline`) decides which frames are due and feeds the step; the
family (`trtalk.families.base`) owns the networks, shared; ``state`` is the stream's
(`trtalk.families.base.FamilyState`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from trtalk.errors import TrtalkError
from trtalk.families.base import Avatar, FamilyState, ModelFamily, PoseInput

LAYOUTS = ("generated", "side-by-side")
RANDOM_WEIGHTS_NOTE = "random weights - no checkpoint"


@dataclass(frozen=True)
class Background:
    """A frame to paste the generated crop into, and the map from its pixels to the crop
    (None: show the frame as it is, e.g. a camera before the first face was seen); ``landmarks``:
    the frame's face mesh (frame pixels), so that only the face is pasted, colour-matched
    (`trtalk.face.pasteback`; None: the template ellipse)."""

    frame: np.ndarray
    crop_m: np.ndarray | None
    landmarks: np.ndarray | None = None


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

    ``layout``: "generated" (the frame only) or "side-by-side" (reference | frame | mouth source
    | pose source, all at the frame's height; the pose panel only with ``pose_panel``, i.e. when
    there is a pose source). ``paste_back``: the crop goes back into the background frame given
    per frame (else the avatar's photo); a full-frame family's frames (the warp avatar) are the
    photo's already, so it changes nothing for them. ``size``: crop families' frames are resized
    to ``size x size`` (the warp avatar renders at its own ``--size``). Frames of a family on
    random weights are stamped so. ``state``: the stream's family state (None: a new one).
    """

    def __init__(self, family: ModelFamily, avatar: Avatar, *, state: FamilyState | None = None,
                 layout: str = "generated", paste_back: bool = False, size: int | None = None,
                 pose_panel: bool = True) -> None:
        if layout not in LAYOUTS:
            raise TrtalkError(f"unknown layout {layout!r}; choose {' or '.join(LAYOUTS)}")
        self.family = family
        self.avatar = avatar
        self.state = state if state is not None else family.new_state()
        self.layout = layout
        self.pose_panel = pose_panel
        self._last_panel: np.ndarray | None = None
        full = family.capabilities.full_frame
        self.size = None if full or size is None or size == family.output_size else int(size)
        self.paster = None
        if paste_back and not full:
            from trtalk.face import PasteBack

            self.paster = PasteBack(crop_size=self.size or family.output_size)
        # The reference panel at the frame's scale: the photo next to pasted-back frames, the
        # family's crop next to crops (the warp avatar's crop *is* the photo's frame).
        self.reference = avatar.image if self.paster is not None else avatar.crop

    def infer(self, frames: Sequence[int], mel: torch.Tensor, pose: torch.Tensor,
              mouth: torch.Tensor | None = None,
              camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        """Generated crops B x H x W x 3 uint8 of ``frames`` from their mel windows and pose codes
        (``mouth``: mouth codes from elsewhere, `trtalk.runtime.mouth_path`; the mel is then unused;
        ``camera``: per frame, the tracked input its pose was encoded from, None where held)."""
        with torch.no_grad():
            if mouth is not None:
                return self.family.generate(self.state, self.avatar, mouth, pose, frames, camera)
            return self.family.synthesize(self.state, self.avatar, mel, frames, pose, camera)

    def compose(self, crop: np.ndarray, background: Background | None = None,
                pose_panel: np.ndarray | None = None, mouth_panel: np.ndarray | None = None) -> np.ndarray:
        """The output frame of one generated crop (side by side: reference | frame | mouth source,
        when it is not the pose source | pose source, when there is one)."""
        if self.size is not None:
            interp = cv2.INTER_AREA if self.size < crop.shape[0] else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (self.size, self.size), interpolation=interp)
        out = crop
        if self.paster is not None:
            bg = background or Background(self.avatar.image, self.avatar.crop_m, self.avatar.state.get("mesh"))
            out = bg.frame if bg.crop_m is None else self.paster(bg.frame, crop, self._to_size(bg.crop_m),
                                                                  bg.landmarks)
        if self.layout == "side-by-side":
            from trtalk.media.frames import composite_side_by_side

            panels = [self.reference, out]
            if mouth_panel is not None:
                panels.append(mouth_panel)
            if self.pose_panel:
                if pose_panel is not None:
                    self._last_panel = pose_panel
                # A frame without a tracked face keeps the last panel (the layout must not change
                # size mid-stream); before the first one, a black panel.
                panels.append(self._last_panel if self._last_panel is not None
                              else np.zeros((out.shape[0], out.shape[0], 3), np.uint8))
            out = composite_side_by_side(panels, height=out.shape[0] - out.shape[0] % 2)
        if self.family.random_weights:
            out = stamp(out, RANDOM_WEIGHTS_NOTE)
        return out

    def _to_size(self, crop_m: np.ndarray) -> np.ndarray:
        """A photo -> crop map for the resized crop (pixel centres as cv2.resize maps them)."""
        if self.size is None:
            return crop_m
        s = self.size / self.family.output_size
        m = np.asarray(crop_m, dtype=np.float64) * s
        m[:, 2] += 0.5 * s - 0.5
        return m

    def __call__(self, frames: Sequence[int], mel: torch.Tensor, pose: torch.Tensor,
                 backgrounds: Sequence[Background | None] | None = None,
                 pose_panels: Sequence[np.ndarray | None] | None = None, *,
                 mouth: torch.Tensor | None = None,
                 mouth_panels: Sequence[np.ndarray | None] | None = None,
                 camera: Sequence[PoseInput | None] | None = None) -> list[np.ndarray]:
        crops = self.infer(frames, mel, pose, mouth, camera)
        n = len(crops)
        bgs = backgrounds if backgrounds is not None else [None] * n
        panels = pose_panels if pose_panels is not None else [None] * n
        mpanels = mouth_panels if mouth_panels is not None else [None] * n
        return [self.compose(c, b, p, m) for c, b, p, m in zip(crops, bgs, panels, mpanels)]
