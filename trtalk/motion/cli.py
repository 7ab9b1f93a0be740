"""`trtalk motion fit VIDEO -o STYLE.json`: a person's head motion style from a talking video of
them (`trtalk.motion.fit`), for ``--pose auto --motion-style STYLE.json``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    """Options of `trtalk motion fit`."""

    video: Path = option(positional=True, help="a talking video of the person with its own audio "
                                               "(30 s to a few minutes; webcam quality is enough)")
    output: Path = option(short="-o", help="the style file to write (.json)")
    name: str | None = option(None, help="the style's name", default_text="the video's file name")
    max_seconds: float = option(600.0, bounds=(2, 3600), help="fit on at most this many seconds of the video")
    prior_seconds: float = option(10.0, bounds=(0, 3600),
                                  help="seconds of the generic style weighed against the video's statistics "
                                       "(a short video's are noisy; 0: the video's alone)")
    rest: bool = option(False, help="also fit the rest posture: the median head angle relative to the video's "
                                    "first frame (when that frame's posture is the avatar photo's); "
                                    "without it the head rests at the photo's pose")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("motion", help="head motion styles for --pose auto (fit one to a video of a person)",
                       description="Head motion styles: `trtalk motion fit VIDEO -o STYLE.json` fits how a "
                                   "person moves their head when they speak; render, stream and serve use it "
                                   "with --pose auto --motion-style STYLE.json.")
    inner = p.add_subparsers(dest="motion_command", metavar="COMMAND")
    add_command(inner, "fit", FitOptions, _fit,
                help="fit a person's head motion style to a talking video of them",
                description="Track the head and eyes of VIDEO, read its audio, and fit the amplitude, rest "
                            "posture, speed and spectral shape, coupling to speech, drift and blink timing "
                            "of the person's head motion; write them to a small JSON style file.",
                examples=(("trtalk motion fit talk.mp4 -o me.json",
                           "your head motion style, then: trtalk render --pose auto --motion-style me.json"),
                          ("trtalk motion fit talk.mp4 -o me.json --rest --max-seconds 120",
                           "with the rest posture, from the first two minutes")))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fit(opts: FitOptions) -> int:
    import time

    from trtalk.motion.fit import fit_style_from_video
    from trtalk.motion.style import save_style

    t0 = time.process_time()
    style, report = fit_style_from_video(opts.video, name=opts.name, max_seconds=opts.max_seconds,
                                         prior_seconds=opts.prior_seconds, rest=opts.rest)
    save_style(style, opts.output)
    b = report["blinks"]
    print(f"wrote {opts.output}: {report['seconds']:.1f} s fitted (distance {report['distance']:.3f}, "
          f"video weight {report['weight']:.2f}); yaw/pitch/roll std "
          f"{'/'.join(f'{v:.1f}' for v in report['target']['std'])} deg; {b['blinks']} blinks "
          f"-> {style.blink_speech_rate_per_min:.0f}/min speaking; {time.process_time() - t0:.1f} s CPU")
    return 0
