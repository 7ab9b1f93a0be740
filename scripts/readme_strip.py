#!/usr/bin/env python
"""The README strip (docs/talking_strip.png): photos talking with a moving head, warp avatar.

Each row is one photo rendered by `trtalk render` (the warp avatar, the built-in speech, `--pose
auto`: head motion and blinks generated from the speech), five frames across the clip (the first
is frame 0, the photo itself), each cut to the same head-and-shoulders box (the whole frames are
the photo's; the box only makes the faces big enough to see). Photos, all public domain and
available offline:

- the built-in astronaut (NASA; `trtalk/assets/README.md`);
- Grace Hopper's official US Navy portrait (a work of the US federal government), as shipped by
  matplotlib (``matplotlib/mpl-data/sample_data/grace_hopper.jpg``): an old photo with glasses
  and a cap;
- the astronaut as a painting: `cv2.stylization` of the photo (no public-domain painting of a
  face ships with any package installed here; this stands in for one, and says so).

    python scripts/readme_strip.py [--out docs/talking_strip.png] [--size 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photos(tmp: Path) -> list[tuple[str, Path]]:
    import matplotlib

    astro = ROOT / "trtalk" / "assets" / "astronaut.png"
    out = [("astronaut (NASA)", astro)]
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        out.append(("Grace Hopper (US Navy)", hopper))
    painted = tmp / "astronaut_painted.png"
    img = cv2.imread(str(astro))
    cv2.imwrite(str(painted), cv2.stylization(img, sigma_s=40, sigma_r=0.35))
    out.append(("astronaut, painted (cv2.stylization)", painted))
    return out


def head_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """A square around the face (1.1 face extents beyond it on each side), inside the frame."""
    from trtalk.face import FaceMeshDetector

    with FaceMeshDetector(static_image_mode=True, max_num_faces=1) as det:
        mesh = det.detect(frame)[0]
    lo, hi = mesh.min(axis=0), mesh.max(axis=0)
    c, half = (lo + hi) / 2, 1.6 * float((hi - lo).max())
    c[1] += 0.25 * half  # some neck and shoulders
    h, w = frame.shape[:2]
    half = min(half, w / 2, h / 2)
    x0 = int(np.clip(c[0] - half, 0, w - 2 * half))
    y0 = int(np.clip(c[1] - half, 0, h - 2 * half))
    return x0, y0, x0 + int(2 * half), y0 + int(2 * half)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "talking_strip.png")
    ap.add_argument("--size", type=int, default=256, help="frame height in the strip")
    ap.add_argument("--columns", type=int, default=5)
    args = ap.parse_args()
    from trtalk.media.read import iter_frames
    from trtalk.runtime.family import WarpFamily
    from trtalk.runtime.render import RenderConfig, render

    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for i, (label, path) in enumerate(photos(tmp)):
            out = tmp / f"{i}.mp4"
            render(RenderConfig(output=out, face=path, pose=Path("auto")), WarpFamily())
            frames = list(iter_frames(out))
            pick = np.linspace(0, len(frames) - 1, args.columns + 1)[:-1].round().astype(int)
            pick[1:] = pick[1:] + (pick[1] - pick[0]) // 2  # between the even steps: mid-motion
            x0, y0, x1, y1 = head_box(frames[0])
            tiles = [cv2.resize(frames[k][y0:y1, x0:x1], (args.size, args.size), interpolation=cv2.INTER_AREA)
                     for k in pick]
            row = np.hstack(tiles)
            cv2.putText(row, label, (6, args.size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
