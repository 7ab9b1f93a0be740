"""Paste a generated 224x224 face crop back into the original frame.

The generated crop lives in network-crop coordinates; ``crop_M`` (from
:func:`trtalk.face.align.crop_matrix`, or ``AlignedClip.crop_matrices``)
maps original-frame pixels to it. We warp the crop back with that map (one
bilinear resampling, the exact inverse of the alignment's: a crop pasted back
unchanged gives the frame back) and blend it in through a soft mask.

Mask shape. PC-AVS and PD-FGC regenerate the whole crop -- background, hair and
neckline included -- and those parts never match the original frame, and
when the generated head turns away from the photo's pose, anything outside
the face would show twice (a ghost hairline, a doubled cap brim). So with the
frame's face landmarks (mediapipe's 468-point mesh, ``landmarks=``) the mask
is the face only: from just above the eyebrows to the chin and cheek to cheek
(the face oval below the brows, closed by the brow line), shrunk by half the
feather so its soft edge lies on skin, then feathered (a Gaussian edge
``FACE_FEATHER`` = 12 pixels of the 224 crop wide, scaled to the frame). The generated face is
colour-matched to the frame inside the mask (per-channel mean and standard
deviation, the mouth left out of the statistics since it opens and shuts; a
running average over frames so the match cannot flicker), so the seam
between generated skin and photo skin does not show.

Without landmarks the mask is a fixed ellipse in crop space around the
template face (``face_mask``: centred, semi-axes about 80 x 93 px of 224, from
the hairline to below the chin), which is what the alignment template
guarantees about any aligned crop.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math

import cv2
import numpy as np

from trtalk.face.align import CROP_SIZE

logger = logging.getLogger(__name__)

#: Default width of the soft edge, in crop pixels (about a tenth of the crop).
DEFAULT_FEATHER = 24.0
#: Width of the landmark mask's soft edge, in crop pixels: the face is about half the crop wide,
#: so a narrower edge than the ellipse's keeps most of it at full strength.
FACE_FEATHER = 12.0

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


#: mediapipe face-mesh indices: the face oval (clockwise from the forehead's top) and the
#: upper contour of each eyebrow (outer to inner), the outer lip contour.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
BROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
OUTER_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
_EYE_OUTER = (33, 263)


def landmark_polygon(landmarks: np.ndarray) -> np.ndarray:
    """The face region of a 468-point mesh (frame pixels, N x 2+): the face oval below the brows,
    closed by the brow line lifted by a tenth of the interocular distance (the brows themselves
    are in, the forehead above them and the hair are not). Returns the convex polygon, K x 2."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    io = float(np.linalg.norm(lm[_EYE_OUTER[1]] - lm[_EYE_OUTER[0]]))
    # "Up" is from the chin towards the forehead, so a tilted head works too.
    up = lm[10] - lm[152]
    up /= max(float(np.linalg.norm(up)), 1e-9)
    brows = lm[list(BROWS)] + 0.1 * io * up
    level = float((brows @ up).max())
    oval = lm[list(FACE_OVAL)]
    pts = np.concatenate([oval[oval @ up < level - 0.05 * io], brows])
    return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)


class PasteBack:
    """Reusable paste-back for one crop size and feather: the ellipse mask is built once.

    ``crop_M`` must map frame pixels into this crop size's pixel grid (for
    the PC-AVS crop, 224: ``AlignedClip.crop_matrices``).

    Call with (frame, generated, crop_M, landmarks=None); see :func:`paste_back`. With the
    frame's face ``landmarks`` the mask is the face only (its soft edge ``face_feather`` pixels of
    the 224 crop wide) and the generated face is colour-matched
    (``colour_match``; ``colour_smoothing`` is the running average's weight of the past frames).
    Work is confined to the frame region the mask lands on, so cost depends on the face's size
    in the frame, not the frame's. One instance serves one stream (the colour match runs over
    its frames); `reset` starts again.
    """

    def __init__(self, crop_size: int = CROP_SIZE, feather: float = DEFAULT_FEATHER,
                 colour_match: bool = True, colour_smoothing: float = 0.8,
                 face_feather: float = FACE_FEATHER) -> None:
        self.crop_size = crop_size
        self.feather = feather
        self.face_feather = face_feather
        self.colour_match = colour_match
        self.colour_smoothing = colour_smoothing
        self.mask = face_mask(crop_size, feather)
        ys, xs = np.nonzero(self.mask)
        # The mask's support in crop pixels; only this part can change the frame.
        self._support = np.array(
            [[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]],
            dtype=np.float64,
        )
        self._mask_key: bytes | None = None
        self._mask_roi: tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the running colour statistics (a new stream)."""
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    def _landmark_mask(self, landmarks: np.ndarray, m: np.ndarray, h: int, w: int
                       ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
        """(ROI x0, y0, x1, y1, the feathered face mask there, the mouth mask there) in frame
        pixels, cached for the same landmarks and map."""
        key = hashlib.blake2b(np.ascontiguousarray(landmarks, np.float64).tobytes() + m.tobytes()
                              + bytes([h % 256, w % 256]), digest_size=16).digest()
        if key == self._mask_key:
            return self._mask_roi
        # The feather is given in crop pixels (of the 224 crop); m scales frame pixels by
        # sqrt(det) into this crop.
        feather = self.face_feather * self.crop_size / CROP_SIZE / max(float(np.sqrt(abs(np.linalg.det(m[:, :2])))), 1e-9)
        sigma = feather / 4.0
        poly = landmark_polygon(landmarks)
        reach = int(math.ceil(3 * sigma)) + 2
        x0 = max(int(math.floor(poly[:, 0].min())) - reach, 0)
        y0 = max(int(math.floor(poly[:, 1].min())) - reach, 0)
        x1 = min(int(math.ceil(poly[:, 0].max())) + reach + 1, w)
        y1 = min(int(math.ceil(poly[:, 1].max())) + reach + 1, h)
        if x1 <= x0 or y1 <= y0:
            self._mask_key, self._mask_roi = key, None
            return None
        shift = 4
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [np.round((poly - [x0, y0]) * (1 << shift)).astype(np.int32)], 255,
                     lineType=cv2.LINE_AA, shift=shift)
        # Shrink by half the feather so the soft edge lies on the face, then feather.
        inset = int(round(feather / 2))
        if inset > 0:
            mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inset + 1, 2 * inset + 1)))
        alpha = mask.astype(np.float32) / 255.0
        if sigma > 0:
            k = 2 * math.ceil(3.0 * sigma) + 1
            alpha = cv2.GaussianBlur(alpha, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
        alpha[alpha < _SNAP] = 0.0
        alpha[alpha > 1.0 - _SNAP] = 1.0
        lips = np.asarray(landmarks, dtype=np.float64)[list(OUTER_LIPS), :2]
        io = float(np.linalg.norm(np.asarray(landmarks)[_EYE_OUTER[1], :2] - np.asarray(landmarks)[_EYE_OUTER[0], :2]))
        mouth = np.zeros_like(mask)
        centre = lips.mean(axis=0)
        # The lips grown downwards: the room a generated mouth opens into.
        grown = np.concatenate([lips, lips + [0.0, 0.35 * io]])
        hull = cv2.convexHull(((grown - centre) * 1.2 + centre - [x0, y0]).astype(np.float32))
        cv2.fillConvexPoly(mouth, np.round(hull.reshape(-1, 2)).astype(np.int32), 1)
        self._mask_key, self._mask_roi = key, ((x0, y0, x1, y1), alpha, mouth.astype(bool))
        return self._mask_roi

    def __call__(self, frame_rgb: np.ndarray, generated: np.ndarray, crop_M: np.ndarray,
                 landmarks: np.ndarray | None = None) -> np.ndarray:
        s = self.crop_size
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"frame: expected HxWx3 uint8, got shape {frame_rgb.shape} dtype {frame_rgb.dtype}")
        if generated.shape != (s, s, 3) or generated.dtype != np.uint8:
            raise ValueError(f"generated: expected {s}x{s}x3 uint8, got shape {generated.shape} dtype {generated.dtype}")
        m = np.asarray(crop_M, dtype=np.float64)
        if m.shape != (2, 3):
            raise ValueError(f"crop_M: expected a 2x3 matrix, got shape {m.shape}")
        h, w = frame_rgb.shape[:2]
        out = frame_rgb.copy()

        lm_mask = None
        if landmarks is not None:
            lm = np.asarray(landmarks)
            if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2:
                raise ValueError(f"landmarks: expected a 468 x 2 (or x 3) face mesh, got shape {lm.shape}")
            if np.isfinite(lm[:, :2]).all():
                lm_mask = self._landmark_mask(lm, m, h, w)
                if lm_mask is None:
                    logger.debug("paste_back: the face lies outside the frame; frame returned unchanged")
                    return out
        if lm_mask is not None:
            (x0, y0, x1, y1), alpha_lm, mouth = lm_mask
        else:
            # Frame rectangle covering the ellipse mask's support (+1 px for bilinear reach).
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
        # ROI pixel, cv2 samples the crop where crop_M sends it.
        roi_m = m.copy()
        roi_m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
        size = (x1 - x0, y1 - y0)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        # Replicate, not black: the mask is zero near the crop's edge anyway,
        # and this keeps black from bleeding in through bilinear taps.
        gen = cv2.warpAffine(generated, roi_m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        # Only what the crop covers may change (a face at the frame's edge: the crop's padding).
        inside = cv2.warpAffine(np.ones((s, s), np.float32), roi_m, size, flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if lm_mask is not None:
            alpha = alpha_lm * (inside > 0.999)
        else:
            alpha = cv2.warpAffine(self.mask, roi_m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=0.0)
        base = out[y0:y1, x0:x1].astype(np.float32)
        if lm_mask is not None and self.colour_match:
            gen = self._match(gen, base, (alpha > 0.5) & ~mouth)
        blended = base + alpha[..., None] * (gen - base)
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def _match(self, gen: np.ndarray, base: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """``gen`` with its per-channel mean and standard deviation inside ``sel`` moved to the
        frame's (a running average over the stream's frames; the std ratio kept in [0.5, 2])."""
        if sel.sum() < 16:
            return gen
        g, b = gen[sel], base[sel]
        stats = np.stack([g.mean(0), g.std(0), b.mean(0), b.std(0)])
        if self._stats is None:
            self._stats = (stats, stats)
        else:
            a = self.colour_smoothing
            self._stats = (a * self._stats[0] + (1 - a) * stats, stats)
        mg, sg, mb, sb = self._stats[0]
        ratio = np.clip(sb / np.maximum(sg, 1e-3), 0.5, 2.0)
        return (gen - mg) * ratio + mb


@functools.lru_cache(maxsize=8)
def _cached(crop_size: int, feather: float) -> PasteBack:
    return PasteBack(crop_size, feather)


def paste_back(
    frame_rgb: np.ndarray,
    generated: np.ndarray,
    crop_M: np.ndarray,
    feather: float = DEFAULT_FEATHER,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """Composite a generated crop into a frame: ``mask*gen + (1-mask)*frame``.

    frame_rgb: HxWx3 uint8 (RGB, though any channel order works if both
    images share it). generated: 224x224x3 uint8 network output. crop_M:
    2x3 original -> crop map (``AlignedClip.crop_matrices[i]``). feather:
    width of the mask's soft edge in crop pixels. landmarks: the frame's
    468-point face mesh (frame pixels): the mask is then the face from brow to
    chin and the generated face is colour-matched to the frame (one frame's
    statistics: this function keeps no state). Returns a new HxWx3 uint8
    frame; the input is not modified. Pixels where the mask is 0 are
    bit-identical to the input frame.
    """
    # crop_M maps into 224-pixel crop coordinates, so the crop must be 224:
    # PasteBack rejects any other size rather than misplace it.
    paster = _cached(CROP_SIZE, float(feather))
    paster.reset()
    return paster(frame_rgb, generated, crop_M, landmarks)
