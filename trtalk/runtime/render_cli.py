"""`trtalk render` and `trtalk demo`: files in, talking-face mp4 out (flags from `RenderConfig`)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option
from trtalk.errors import TrtalkError
from trtalk import threads
from trtalk.runtime.render import RenderConfig

log = logging.getLogger(__name__)


@dataclass
class DemoConfig(RenderConfig):
    """`trtalk demo`: `trtalk render` with the demo's output name (the built-in warp avatar unless
    a checkpoint is given)."""

    output: Path = option(Path("out/demo.mp4"), short="-o", help="output mp4")


def register(sub) -> None:
    add_command(sub, "render", RenderConfig, _run,
                help="render a talking-face mp4 from a face, a speech track and a pose source",
                description="Offline rendering: the stream's pipeline on a virtual clock. Without "
                            "--checkpoint the built-in warp avatar is used (--model pcavs runs PC-AVS "
                            "on seeded random weights, stamped so); without --face/--audio the "
                            "built-in photo and speech clip.")
    add_command(sub, "demo", DemoConfig, _run,
                help="render a talking-face clip with the built-in warp avatar (no model downloads)",
                description="`trtalk render` writing out/demo.mp4: the built-in photo speaking the "
                            "built-in speech clip with a gentle head motion, through the warp avatar.")


def _run(cfg: RenderConfig) -> int:
    from tqdm import tqdm

    from trtalk.runtime.render import render

    if cfg.output == Path(type(cfg).__dataclass_fields__["output"].default):
        # Only the default folder is created: a typo in a user path should fail, not grow directories.
        try:
            cfg.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrtalkError(f"cannot write {cfg.output}: {exc.strerror or exc}") from None
    threads.apply(cfg.threads, cfg.model.family_threads())
    family = cfg.model.open(cfg.fps)
    with tqdm(total=0, unit="frame", desc="render", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = render(cfg, family, progress)
    note = " [RANDOM WEIGHTS: no checkpoint]" if result.random_weights else ""
    print(f"rendered {result.frames} frames in {result.seconds:.1f} s ({result.fps:.2f} frames/s, "
          f"{family.name}) -> {result.output}{note}", file=sys.stdout)
    return 0
