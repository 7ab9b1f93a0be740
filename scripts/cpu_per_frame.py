"""Process CPU seconds per frame of one trtalk command (user + system, this process and its
children), robust to other load on the machine: a speed comparison between two checkouts that a
busy machine can still make. Wall-clock frames/s need an idle machine (`trtalk bench`).

    python scripts/cpu_per_frame.py OUT.mp4 -- render -o OUT.mp4 ...
    python scripts/cpu_per_frame.py OUT.mp4 -- stream --fast --record OUT.mp4 ...

prints one JSON line: {"cpu_s": ..., "frames": (counted in OUT.mp4), "cpu_s_per_frame": ...,
"wall_s": ...}. CPU time includes start-up and model loading: compare like with like.
Run it with the checkout to measure first on PYTHONPATH (see the issue-21 note for the commands).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[0]
    cmd = argv[2:]
    from trtalk.cli import main as trtalk_main

    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    rc = trtalk_main(cmd)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    import av

    with av.open(out) as c:
        frames = sum(1 for _ in c.decode(video=0))
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) + c1.ru_utime + c1.ru_stime
    print(json.dumps({"rc": rc, "cpu_s": round(cpu, 3), "frames": frames,
                      "cpu_s_per_frame": round(cpu / max(frames, 1), 4),
                      "wall_s": round(time.perf_counter() - t0, 3), "pid": os.getpid()}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
