"""`trtalk render` and `trtalk demo`: files in, talking-face mp4 out (flags from `RenderConfig`)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option
from trtalk import threads
from trtalk.runtime.render import RenderConfig

log = logging.getLogger(__name__)


@dataclass
class DemoConfig(RenderConfig):
    """`trtalk demo`: `trtalk render` with the demo's output name (the built-in warp avatar unless
    a checkpoint is given)."""

    output: Path = option(Path("out/demo.mp4"), short="-o", metavar="OUT.mp4", help="output mp4")
    pose: Path | None = option(Path("auto"), metavar="SRC", help="head pose: video or image, looped forward and "
                               "backward; 'auto': head motion and blinks generated from the speech")


#: The two subcommands: (name, config, help, description, common flags, examples, flags left out).
COMMANDS = (
    ("render", RenderConfig, "render a talking-face mp4 from a face, a speech track and a pose source",
     "Offline rendering: the stream's pipeline on a virtual clock. Without --checkpoint the built-in "
     "warp avatar is used (--model pcavs runs PC-AVS on seeded random weights, stamped so); without "
     "--face/--audio the built-in photo and speech clip.",
     ("--face", "--audio", "--output", "--pose", "--mouth", "--duration", "--paste-back", "--checkpoint",
      "--model", "--backend", "--device"),
     (("trtalk render --face me.jpg --audio talk.wav -o talk.mp4",
       "your photo speaking your recording (warp avatar, head motion from the speech)"),
      ("trtalk render --face me.mp4 --audio talk.wav --pose head.mp4 --paste-back --checkpoint pcavs.safetensors",
       "PC-AVS: the head follows head.mp4, the face pasted back into me.mp4's frames"),
      ("trtalk render --config talk.toml --duration 5",
       "the options of a file (trtalk render --print-config > talk.toml), 5 s only")),
     ()),
    ("demo", DemoConfig, "render a talking-face clip with the built-in warp avatar (no model downloads)",
     "`trtalk render` writing out/demo.mp4: the built-in photo speaking the built-in speech clip with "
     "head motion and blinks generated from the speech (--pose auto), through the warp avatar.",
     ("--output", "--face", "--audio", "--duration", "--size", "--paste-back"),
     (("trtalk demo", "the built-in photo and speech -> out/demo.mp4"),
      ("trtalk demo --face me.jpg -o me.mp4", "your photo speaking the built-in clip"),
      ("trtalk demo --audio talk.wav --duration 10", "the first 10 s of your recording")),
     # a file render on the warp avatar: no live timing (virtual clock), no PD-FGC factors
     ("live timing", "PD-FGC factors")),
)


def register(sub) -> None:
    for name, cls, help_, description, basic, examples, omit in COMMANDS:
        add_command(sub, name, cls, _run, help=help_, description=description, basic=basic,
                    examples=examples, omit=omit)


def _run(cfg: RenderConfig) -> int:
    from trtalk import progress
    from trtalk.fsutil import output_parent
    from trtalk.media.mp4 import check_video_path
    from trtalk.runtime.render import check_render, render

    check_video_path(cfg.output, "-o")  # before minutes of work: x.gif is refused now
    # A missing output folder is created (as by demo, convert and stream --record), and removed
    # again when the render fails or is interrupted.
    with output_parent(cfg.output):
        check_render(cfg)  # inputs, output, memory estimate: before the model loads
        threads.apply(cfg.threads, cfg.model.family_threads())
        family = cfg.model.open(cfg.fps, mouth_smoothing="centred", size=cfg.size)
        with progress.bar(total=0, unit="frame", desc="render") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = render(cfg, family, progress)
    note = " [RANDOM WEIGHTS: no checkpoint]" if result.random_weights else ""
    print(f"rendered {result.frames} frames in {result.seconds:.1f} s ({result.fps:.2f} frames/s, "
          f"{family.name}) -> {result.output}{note}", file=sys.stdout)
    return 0
