"""How `--mouth-blend`'s default was picked: inverse-variance weighting of the two mouth estimates.

    python scripts/mouth_blend_weight.py TALKING.mp4 STILL_MOUTH.mp4

TALKING: a talking clip with its own audio track (here: the warp avatar rendered from 3 s of the
demo speech, `trtalk render --model warp --audio s3.wav -o driver.mp4`). STILL_MOUTH: a clip whose
head moves but whose mouth does not (tests/conftest.py's ``head_motion_frames`` of the astronaut).

The warp avatar's codes are measured (mouth opening): the audio estimate's error is its residual
against the lips seen on the talking clip (`LipMeter`), the webcam estimate's error is what the
meter reads on the still mouth (tracking jitter under head motion). Weight of the webcam mouth
``W = e_audio^2 / (e_audio^2 + e_webcam^2)`` (mean squares). Measured: r(open) audio vs visual
0.915, audio residual RMS 0.16, visual jitter RMS 0.04 -> W = 0.94; the default is 0.9.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    from trtalk.audio import load_audio
    from trtalk.runtime.mouth_path import LipMeter, MouthClip
    from trtalk.warp.drive import mouth_params

    talking, still = argv[0], argv[1]
    clip = MouthClip(talking)
    meter = LipMeter()
    visual = np.array([meter(clip.clip.landmarks[j]) for j in range(len(clip))])
    audio = mouth_params(load_audio(talking), len(clip))
    res = audio[:, 0] - visual[:, 0]
    r = float(np.corrcoef(audio[:, 0], visual[:, 0])[0, 1])
    still_clip = MouthClip(still)
    meter = LipMeter()
    jitter = np.array([meter(still_clip.clip.landmarks[j]) for j in range(len(still_clip))])[:, 0]
    ea, ev = float(np.mean(res ** 2)), float(np.mean(jitter ** 2))
    print(f"r(open) audio vs visual {r:.3f}; audio residual RMS {ea ** 0.5:.3f}; "
          f"visual jitter RMS {ev ** 0.5:.3f}; inverse-variance weight of the webcam mouth "
          f"{ea / (ea + ev):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
