"""Compile the Triton modulated-conv kernel ahead of time for every GPU architecture in its table.

    python scripts/triton_compile_check.py            # every (arch, layer, config): ~1 minute
    python scripts/triton_compile_check.py --quick    # the first config of sm_90 "up", sm_86 "rgb"

No GPU needed: Triton's own ptxas builds the cubin for sm_80/86/89/90. Prints one line per
compile (arch, layer, tiles, warps, stages, shared memory used / the GPU's limit, seconds) and
exits 1 if any entry fails to compile or does not fit. Run it without TRITON_INTERPRET (the
interpreter replaces the functions the compiler needs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUICK = (("sm_90", "up"), ("sm_86", "rgb"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two compiles instead of the whole table")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    from trtalk.kernels import triton_modconv as tm

    jobs = []
    for arch, kinds in tm.ARCH_CONFIGS.items():
        for layer in ("conv", "up", "rgb"):
            cfgs = kinds["rgb" if layer == "rgb" else "conv"]
            if args.quick:
                if (arch, layer) not in QUICK:
                    continue
                cfgs = cfgs[:1]
            jobs += [(arch, layer, cfg) for cfg in cfgs]
    failed = 0
    for arch, layer, cfg in jobs:
        t0 = time.perf_counter()
        try:
            shared = tm.compile_for(arch, cfg, layer).metadata.shared
            ok = shared <= tm.SMEM_LIMIT[arch]
            status = "ok" if ok else "TOO MUCH SHARED MEMORY"
        except Exception as e:  # report every entry, fail at the end
            shared, ok, status = -1, False, f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        failed += not ok
        print(f"{arch} {layer:4s} M{cfg.block_m} N{cfg.block_n} K{cfg.block_k} w{cfg.num_warps} "
              f"s{cfg.num_stages} shared {shared}/{tm.SMEM_LIMIT[arch]} "
              f"{time.perf_counter() - t0:.1f}s {status}", flush=True)
    print(f"{len(jobs) - failed}/{len(jobs)} compiled and fit")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
