"""Where the head is, besides how it is turned: its shift and scale in the frame from a pose source.

:class:`HeadPlacement` follows a tracked face mesh's head *position* relative to the first one:
the similarity fit of the rigid upper-face points (`trtalk.warp.mesh.rigid_fit`) moves the head's
pivot (behind the face, as `trtalk.warp.avatar.Avatar` rotates about it), and that pivot's 2D
shift, in interocular distances of the first face, and the fit's scale (as a log) are what the
avatar repeats. Rotation is `trtalk.warp.drive.MeshRotation`'s; measuring the shift at the pivot
keeps the two from counting the same motion twice (a turn about the pivot does not move it).
"""

from __future__ import annotations

import numpy as np

from trtalk.warp import mesh as M


class HeadPlacement:
    """``update(mesh)`` -> (dx, dy, log scale) of the head relative to the first mesh.

    ``mesh``: 468x3 (pixels, mediapipe depth) or None (no face: the previous value repeats). The
    first mesh is the reference (zeros). ``smoothing``: exponential smoothing of the result
    (mediapipe's jitter is about half a pixel).
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        self._smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        self._ref: np.ndarray | None = None
        self._subset: np.ndarray | None = None
        self._pivot = np.zeros(3)
        self._io = 1.0
        self._value = np.zeros(3)

    def update(self, mesh: np.ndarray | None) -> np.ndarray:
        if mesh is None:
            return self._value.copy()
        mesh = np.asarray(mesh, dtype=np.float64)
        if mesh.shape[1] < 3 or not np.isfinite(mesh).all():
            return self._value.copy()
        if self._ref is None:
            self._ref, self._subset = mesh, M.rigid_subset(mesh)
            self._io = max(float(np.linalg.norm(mesh[M.EYE_OUTER_RIGHT, :2] - mesh[M.EYE_OUTER_LEFT, :2])), 1e-6)
            c = mesh.mean(axis=0)
            self._pivot = np.array([c[0], c[1], c[2] + 0.7 * self._io])
            return self._value.copy()
        rot, scale, t = M.rigid_fit(self._ref[self._subset], mesh[self._subset])
        moved = scale * rot @ self._pivot + t
        v = np.array([(moved[0] - self._pivot[0]) / self._io, (moved[1] - self._pivot[1]) / self._io,
                      np.log(max(scale, 1e-6))])
        self._value = self._smoothing * self._value + (1 - self._smoothing) * v
        return self._value.copy()
