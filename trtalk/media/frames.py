"""Frame helpers shared by the writers and the output layouts (numpy and OpenCV only).

Frames are ``H x W x 3`` RGB ``uint8`` arrays, C-contiguous or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["check_frame", "composite_side_by_side", "pad_to_even"]


def check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """Return ``frame_rgb`` if it is an encodable ``H x W x 3`` uint8 frame (H, W >= 2).

    Raises:
        TypeError: not a numpy array.
        ValueError: wrong shape or dtype, or smaller than 2 x 2.
    """
    if not isinstance(frame_rgb, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame_rgb).__name__}")
    if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(
            f"frame must be HxWx3 uint8 RGB, got shape {frame_rgb.shape} dtype {frame_rgb.dtype}"
        )
    if frame_rgb.shape[0] < 2 or frame_rgb.shape[1] < 2:
        raise ValueError(f"frame too small to encode: {frame_rgb.shape}")
    return frame_rgb


def pad_to_even(frame_rgb: np.ndarray) -> np.ndarray:
    """Pad an odd width/height by repeating the last column/row (yuv420p needs even sizes)."""
    h, w = frame_rgb.shape[:2]
    if not (h % 2 or w % 2):
        return frame_rgb
    return cv2.copyMakeBorder(np.ascontiguousarray(frame_rgb), 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def composite_side_by_side(panels: Sequence[np.ndarray], height: int = 224) -> np.ndarray:
    """Resize each panel to ``height`` (keeping aspect) and join left to right.

    Used for ``--layout side-by-side`` (reference | generated | pose source).
    Panels are ``H x W x 3`` RGB uint8 (``H x W`` grey is expanded); the
    result is ``height x sum(W_i * height / H_i) x 3`` uint8, each panel width
    rounded to the nearest pixel (at least 1).

    Raises:
        ValueError: no panels, or a panel that is not an image array.
    """
    if not panels:
        raise ValueError("composite_side_by_side needs at least one panel")
    if height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    out = []
    for i, p in enumerate(panels):
        p = np.asarray(p)
        if p.ndim == 2:
            p = np.repeat(p[:, :, None], 3, axis=2)
        if p.ndim != 3 or p.shape[2] != 3 or p.shape[0] == 0 or p.shape[1] == 0:
            raise ValueError(f"panel {i} must be HxWx3, got shape {p.shape}")
        if p.dtype != np.uint8:
            raise ValueError(f"panel {i} must be uint8, got {p.dtype}")
        h, w = p.shape[:2]
        new_w = max(1, round(w * height / h))
        if (h, w) != (height, new_w):
            interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
            p = cv2.resize(np.ascontiguousarray(p), (new_w, height), interpolation=interp)
        out.append(p)
    return np.ascontiguousarray(np.hstack(out))
