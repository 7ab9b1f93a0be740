"""Paste a generated 224x224 face crop back into the original frame.

The generated crop lives in network-crop coordinates; ``crop_m`` (from
:func:`trtalk.face.align.crop_matrix`, or ``AlignedClip.crop_matrices``)
maps original-frame pixels to it. We warp the crop back with that map and
blend it in through a soft mask.

Mask shape. PC-AVS regenerates the whole crop -- background, hair and
neckline included -- and those parts never match the original frame
exactly, while the face itself always sits where the alignment template
puts it (eyes near y=69, mouth at (112, 140) in crop pixels). So the mask is
a fixed ellipse in crop space around the template face: centred in the
crop, semi-axes about 80 x 93 px (80 x 94 asked, shrunk so the soft edge
ends inside the crop), i.e. from the hairline to below the chin (room for
the jaw dropping while speaking) and cheek to cheek. It leaves out the
crop's corners and edges: hair and background there, and black padding when
the face is near the frame edge.
A fixed mask costs nothing per frame and cannot flicker, unlike a hull of
landmarks re-detected on each generated frame. Its edge is a Gaussian ramp
``feather`` crop pixels wide, centred on the ellipse.
"""

from __future__ import annotations

import functools
import logging
import math

import cv2
import numpy as np

from trtalk.face.align import CROP_SIZE

logger = logging.getLogger(__name__)

#: Default width of the soft edge, in crop pixels (about a tenth of the crop).
DEFAULT_FEATHER = 24.0

# Ellipse centre and semi-axes as fractions of the crop side (224 -> centre, 80 x 94).
_CENTRE = (0.5, 0.5)
_AXES = (80.0 / 224.0, 94.0 / 224.0)
# Mask values this close to 0 or 1 are snapped, so that outside the face the
# frame is kept bit-exactly and inside it the generated pixels are used as is
# (1/512 is under half a grey level even at full contrast).
_SNAP = 1.0 / 512.0


def face_mask(size: int = CROP_SIZE, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The blend mask in crop space: (size, size) float32 in [0, 1], 1 on the face.

    An ellipse (see the module docstring) whose edge is blurred by a Gaussian
    of sigma ``feather / 4`` (so the 2.5%..97.5% ramp is ``feather`` wide),
    then snapped to exact 0/1 within 1/512. The semi-axes shrink if needed so
    the ramp ends inside the crop.
    """
    if size < 16:
        raise ValueError(f"mask size must be at least 16, got {size}")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    sigma = feather / 4.0
    reach = 3.0 * sigma + 1.0  # where the blurred edge has died out
    cx, cy = _CENTRE[0] * (size - 1), _CENTRE[1] * (size - 1)
    ax = min(_AXES[0] * size, cx - reach, size - 1 - cx - reach)
    ay = min(_AXES[1] * size, cy - reach, size - 1 - cy - reach)
    if ax <= 2 or ay <= 2:
        raise ValueError(f"feather {feather} is too wide for a {size}px crop")
    mask = np.zeros((size, size), dtype=np.float32)
    # Sub-pixel precise ellipse: cv2 takes fixed-point coordinates with `shift` bits.
    shift = 4
    one = 1 << shift
    cv2.ellipse(
        mask,
        (int(round(cx * one)), int(round(cy * one))),
        (int(round(ax * one)), int(round(ay * one))),
        0.0,
        0.0,
        360.0,
        1.0,
        thickness=-1,
        lineType=cv2.LINE_AA,
        shift=shift,
    )
    if sigma > 0:
        k = 2 * math.ceil(3.0 * sigma) + 1
        mask = cv2.GaussianBlur(mask, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    mask[mask < _SNAP] = 0.0
    mask[mask > 1.0 - _SNAP] = 1.0
    return mask


class PasteBack:
    """Reusable paste-back for one crop size and feather: the mask is built once.

    ``crop_m`` must map frame pixels into this crop size's pixel grid (for
    the PC-AVS crop, 224: ``AlignedClip.crop_matrices``).

    Call with (frame, generated, crop_m); see :func:`paste_back`. Work is
    confined to the frame region the mask lands on, so cost depends on the
    face's size in the frame, not the frame's.
    """

    def __init__(self, crop_size: int = CROP_SIZE, feather: float = DEFAULT_FEATHER) -> None:
        self.crop_size = crop_size
        self.feather = feather
        self.mask = face_mask(crop_size, feather)
        ys, xs = np.nonzero(self.mask)
        # The mask's support in crop pixels; only this part can change the frame.
        self._support = np.array(
            [[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]],
            dtype=np.float64,
        )

    def __call__(self, frame_rgb: np.ndarray, generated: np.ndarray, crop_m: np.ndarray) -> np.ndarray:
        s = self.crop_size
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"frame: expected HxWx3 uint8, got shape {frame_rgb.shape} dtype {frame_rgb.dtype}")
        if generated.shape != (s, s, 3) or generated.dtype != np.uint8:
            raise ValueError(f"generated: expected {s}x{s}x3 uint8, got shape {generated.shape} dtype {generated.dtype}")
        m = np.asarray(crop_m, dtype=np.float64)
        if m.shape != (2, 3):
            raise ValueError(f"crop_m: expected a 2x3 matrix, got shape {m.shape}")
        h, w = frame_rgb.shape[:2]
        out = frame_rgb.copy()

        # Frame rectangle covering the mask's support (+1 px for bilinear reach).
        inv = cv2.invertAffineTransform(m)
        corners = self._support @ inv[:, :2].T + inv[:, 2]
        x0 = max(int(math.floor(corners[:, 0].min())) - 1, 0)
        y0 = max(int(math.floor(corners[:, 1].min())) - 1, 0)
        x1 = min(int(math.ceil(corners[:, 0].max())) + 2, w)
        y1 = min(int(math.ceil(corners[:, 1].max())) + 2, h)
        if x1 <= x0 or y1 <= y0:
            logger.debug("paste_back: the face lies outside the frame; frame returned unchanged")
            return out

        # Map from ROI pixels to crop pixels, used as an inverse map: for every
        # ROI pixel, cv2 samples the crop where crop_m sends it.
        roi_m = m.copy()
        roi_m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
        size = (x1 - x0, y1 - y0)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        # Replicate, not black: the mask is zero near the crop's edge anyway,
        # and this keeps black from bleeding in through bilinear taps.
        gen = cv2.warpAffine(generated, roi_m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self.mask, roi_m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)

        base = out[y0:y1, x0:x1].astype(np.float32)
        blended = base + alpha[..., None] * (gen.astype(np.float32) - base)
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out


@functools.lru_cache(maxsize=8)
def _cached(crop_size: int, feather: float) -> PasteBack:
    return PasteBack(crop_size, feather)


def paste_back(
    frame_rgb: np.ndarray,
    generated: np.ndarray,
    crop_m: np.ndarray,
    feather: float = DEFAULT_FEATHER,
) -> np.ndarray:
    """Composite a generated crop into a frame: ``mask*gen + (1-mask)*frame``.

    frame_rgb: HxWx3 uint8 (RGB, though any channel order works if both
    images share it). generated: 224x224x3 uint8 network output. crop_m:
    2x3 original -> crop map (``AlignedClip.crop_matrices[i]``). feather:
    width of the mask's soft edge in crop pixels. Returns a new HxWx3 uint8
    frame; the input is not modified. Pixels where the mask is 0 are
    bit-identical to the input frame.
    """
    # crop_m maps into 224-pixel crop coordinates, so the crop must be 224:
    # PasteBack rejects any other size rather than misplace it.
    return _cached(CROP_SIZE, float(feather))(frame_rgb, generated, crop_m)
