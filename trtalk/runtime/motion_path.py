"""Generated head motion and blinks as the pipeline's pose source (`--pose auto`).

Per output frame k, in order, from frame k's own mel window (the one the frame step feeds the
mouth, so nothing waits for more audio than the lips already do):

    angles  = HeadMotion.step(window k)                  # trtalk.motion.head
    closure = BlinkGenerator.step(speaking, mouth_open)  # trtalk.motion.blink, same clock
    codes   = family.motion_codes(avatar, angles, closure)

The warp avatar takes the angles (and the eye closure) directly; a family that encodes pose from
images maps the angles through the avatar's angle map (`trtalk.motion.posemap`), built when the
path is made (at load time, before the first frame) or taken from the cache. PD-FGC, whose eye
code is its own input, blinks from the same windows with the same features, generator and
settings in the family (`PDFGCFamily.listen`): the same decisions as ``closure`` here, and its
live "blink now" reaches the blinks it shows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from trtalk.motion.blink import BlinkConfig, BlinkGenerator
from trtalk.motion.head import HeadMotion, MotionConfig
from trtalk.motion.style import MotionStyle, resolve_style
from trtalk.families.base import Avatar, ModelFamily

log = logging.getLogger(__name__)

#: the value of ``--pose`` that selects generated motion
AUTO = "auto"


def is_auto(pose: object) -> bool:
    """Whether a ``--pose`` value asks for generated motion (the word ``auto``; a file of that
    name is given as ``./auto``)."""
    return pose is not None and str(pose) == AUTO


def auto_motion(motion: MotionConfig, blink: BlinkConfig,
                style: MotionStyle | None = None) -> tuple[MotionStyle, BlinkConfig]:
    """The head motion style and blink settings of ``--pose auto``: ``style`` when given (a
    server's uploaded style), else ``--motion-style``'s file, else the generic style; the blinks
    take the style's rate and duration unless a ``--blink-*`` timing flag was given."""
    st = style if style is not None else resolve_style(motion.style)
    default = BlinkConfig()
    timing = ("rate_per_min", "speech_rate_per_min", "duration_s")
    if all(getattr(blink, k) == getattr(default, k) for k in timing):
        duration = min(st.blink_duration_s, blink.min_interval_s)
        blink = replace(blink, rate_per_min=st.blink_rate_per_min,
                        speech_rate_per_min=st.blink_speech_rate_per_min, duration_s=duration)
    return st, blink


class MotionPose:
    """Pose codes of output frames from generated head motion and blinks (module docstring).

    ``trace`` keeps (frame, yaw, pitch, roll, eye closure) of every emitted frame when
    ``keep_trace`` (tests, the benchmark).
    """

    def __init__(self, family: ModelFamily, avatar: Avatar, fps: float, motion: MotionConfig | None = None,
                 blink: BlinkConfig | None = None, keep_trace: bool = False,
                 style: MotionStyle | None = None) -> None:
        self.family = family
        self.avatar = avatar
        self.head = HeadMotion(fps, motion, style=style)
        self.blink = BlinkGenerator(fps, blink)
        self.keep_trace = keep_trace
        self.trace: list[tuple[int, float, float, float, float]] = []
        self._last = -1
        t0 = time.perf_counter()
        family.motion_codes(avatar, torch.zeros(1, 3), torch.zeros(1))  # builds the angle map now
        log.info("generated head motion (--pose auto) for %s ready in %.2f s", family.name,
                 time.perf_counter() - t0)

    def reset(self) -> None:
        self.head.reset()
        self.blink.reset()
        self.trace.clear()
        self._last = -1

    def codes(self, frames: Sequence[int], mel: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pose codes B x P of ``frames`` (increasing) from their mel windows B x 1 x 80 x 20."""
        windows = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
        angles = np.zeros((len(frames), 3), np.float32)
        closure = np.zeros(len(frames), np.float32)
        for i, (k, w) in enumerate(zip(frames, windows)):
            skip = max(0, k - self._last - 1)  # frames dropped live: the clocks still advance
            for _ in range(skip):
                self.head.step(w)
                self._blink_step()
            angles[i] = self.head.step(w)
            closure[i] = self._blink_step()
            self._last = k
            if self.keep_trace:
                self.trace.append((k, *map(float, angles[i]), float(closure[i])))
        return self.family.motion_codes(self.avatar, torch.from_numpy(angles), torch.from_numpy(closure))

    def _blink_step(self) -> float:
        f = self.head.features
        return self.blink.step(speaking=f.speaking if f is not None else None,
                               mouth_open=f.mouth_open if f is not None else None)
