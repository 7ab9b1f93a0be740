"""The warp avatar's visual mouth: lip opening and rounding measured on a face mesh."""

from __future__ import annotations

import numpy as np

from trtalk.warp import mesh as M


class LipMeter:
    """The warp avatar's visual mouth: (open, rounding) measured on a face mesh.

    Open = inner-lip gap (mid upper to mid lower lip) in interocular distances above the rest gap
    (the smallest seen so far: a closed mouth, or the face's own parted lips), over ``open_gap``,
    the gap the warp avatar's fully open mouth adds to its closed lips (0.16 interocular distances,
    measured with the same detector on the avatar's own frames: its opening is absolute, 0 =
    closed lips, and the detector reads the drawn inner lips a little narrower than the rig). Rounding = how much
    narrower the mouth corners are than at rest, over ``round_narrow`` (the avatar's rounding 1
    narrows them by ~14 %), only while the mouth is open (as the audio mapping does).
    """

    def __init__(self, open_gap: float = 0.16, round_narrow: float = 0.14) -> None:
        self.open_gap = open_gap
        self.round_narrow = round_narrow
        self.reset()

    def reset(self) -> None:
        self.rest_gap: float | None = None
        self.rest_width: float | None = None

    @staticmethod
    def measure(mesh: np.ndarray) -> tuple[float, float]:
        """(lip gap, mouth-corner width), both in interocular distances."""
        lm = np.asarray(mesh, dtype=np.float64)[:, :2]
        io = float(np.linalg.norm(lm[M.EYE_OUTER_RIGHT] - lm[M.EYE_OUTER_LEFT])) or 1.0
        gap = float(np.linalg.norm(lm[M.LOWER_LIP_MID] - lm[M.UPPER_LIP_MID])) / io
        width = float(np.linalg.norm(lm[M.MOUTH_CORNERS[0]] - lm[M.MOUTH_CORNERS[1]])) / io
        return gap, width

    def __call__(self, mesh: np.ndarray) -> np.ndarray:
        gap, width = self.measure(mesh)
        self.rest_gap = gap if self.rest_gap is None else min(self.rest_gap, gap)
        open_ = float(np.clip((gap - self.rest_gap) / self.open_gap, 0.0, 1.0))
        if self.rest_width is None:
            self.rest_width = width
        elif open_ < 0.1:  # the rest width follows the closed mouth (smiles drift it)
            self.rest_width += 0.2 * (width - self.rest_width)
        narrow = (self.rest_width - width) / max(self.rest_width, 1e-6)
        rounding = float(np.clip(narrow / self.round_narrow, 0.0, 1.0)) * min(1.0, 3.0 * open_)
        out = np.array([open_, rounding], dtype=np.float32)
        out[out < 0.02] = 0.0
        return out
