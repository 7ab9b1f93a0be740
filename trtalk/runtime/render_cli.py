"""`trtalk render`: files in, talking-face mp4 out."""

from __future__ import annotations

import argparse
from pathlib import Path

from trtalk.errors import TrtalkError
from trtalk.runtime.render import DEFAULT_AUDIO, DEFAULT_FACE, LAYOUTS, RenderConfig, render


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render", help="render a talking-face mp4 from a face, a speech track and a pose source",
        description="PC-AVS offline rendering. Without --checkpoint the networks use seeded random "
                    "weights (the output says so); without --face/--audio the built-in photo and "
                    "speech clip are used.")
    p.add_argument("--face", type=Path, default=DEFAULT_FACE, help="identity: image, folder of frames or video "
                   "(default: the built-in photo)")
    p.add_argument("--audio", type=Path, default=DEFAULT_AUDIO,
                   help="speech: wav/mp3/m4a or a video's audio track (default: the built-in clip)")
    p.add_argument("--pose", type=Path, default=None,
                   help="head pose: video or image (default: the face source itself)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="official PC-AVS checkpoint folder or a `trtalk convert` .safetensors file")
    p.add_argument("-o", "--output", type=Path, default=Path("out/render.mp4"), help="output mp4")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--layout", choices=LAYOUTS, default="generated",
                   help="generated frame only, or reference | generated | pose source")
    p.add_argument("--paste-back", action="store_true", help="paste the generated face into the face frames")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch", type=int, default=8, help="frames per generator call")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--noise", default="fixed", choices=("fixed", "random", "zero"),
                   help="generator noise: the checkpoint's fixed buffers (deterministic, default), "
                        "fresh noise per frame (as the published demo), or none")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    cfg = RenderConfig(output=args.output, face=args.face, audio=args.audio, pose=args.pose,
                       checkpoint=args.checkpoint, fps=args.fps, layout=args.layout,
                       paste_back=args.paste_back, device=args.device, batch=args.batch,
                       noise=args.noise, seed=args.seed, backend=args.backend)
    with tqdm(total=0, unit="frame", desc="render", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = render(cfg, progress)
    note = " [RANDOM WEIGHTS: no checkpoint]" if result.random_weights else ""
    print(f"rendered {result.frames} frames in {result.seconds:.1f} s "
          f"({result.fps:.2f} frames/s) -> {result.output}{note}")
    return 0
