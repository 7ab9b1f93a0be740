"""The CPU thread policy of every trtalk command: how many threads compute, and that idle ones sleep.

Why. trtalk runs several thread pools in one process: torch's intra-op pool (OpenMP, which MKL and
oneDNN share), ONNX Runtime's intra-op pool, OpenCV's pool, and beside them the capture threads of
the sources (mediapipe's face tracking runs in the camera's). By default the OpenMP and ONNX Runtime
workers *spin* after each parallel region, waiting for the next one. On an idle machine that saves a
few microseconds; next to any other busy process it is a collapse: the pool's threads burn their
time slices spinning while the thread they wait for is descheduled, every barrier waits a whole
scheduler slice, and the kernel is busy switching them. Measured on 2 shared cores with a
busy-loop process per core, the small-model real-time stream (20 s): 0.27 and 0.50 fps (3.4 and
2.2 s of compute per frame, more CPU burnt) with the defaults, 3.05 and 1.89 fps (0.32 and 0.52 s)
with idle threads sleeping; unloaded both ran about 23 fps (benchmarks/contention.sh).

The policy (:func:`apply`, called by the front ends before any model work; the README's stream
section documents it):

* **Idle pool threads sleep**: ``OMP_WAIT_POLICY=PASSIVE`` (GNU and Intel OpenMP read it once, when
  torch is loaded, so :func:`prepare_env` runs at the top of the ``trtalk`` command, before torch is
  imported) and ``KMP_BLOCKTIME=0`` (Intel OpenMP); ONNX Runtime sessions are made with
  ``session.intra_op.allow_spinning=0`` (:func:`configure_ort`). A value of ``OMP_WAIT_POLICY`` or
  ``KMP_BLOCKTIME`` already in the environment is kept; ``OMP_WAIT_POLICY=ACTIVE`` also lets ONNX
  Runtime spin (for a dedicated machine).
* **Compute threads** (torch intra-op and ONNX Runtime intra-op, the same number): ``--threads N``,
  else ``TRTALK_THREADS``, else the family's default (the warp avatar on torch: 1, its network is
  small), else the CPUs this process may use (its affinity mask and cgroup CPU quota), at most
  torch's own default (the physical cores).
* **One torch inter-op thread** (trtalk never runs independent torch ops in parallel) and **one
  OpenCV thread** (its images are small; a second pool would only compete with the first).
* mediapipe (TensorFlow Lite, XNNPACK) sizes its own pool and has no setting for it in the legacy
  solutions API trtalk uses; it runs in the camera's capture thread.

This module imports neither torch nor OpenCV at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

#: Environment variable that sets the compute threads when ``--threads`` is not given.
THREADS_ENV = "TRTALK_THREADS"
#: Most compute threads accepted (a typo such as 10000 should fail, not start 10000 threads).
MAX_THREADS = 1024
#: Environment the OpenMP runtimes read when torch loads; values already set are kept.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`apply` set: compute threads (torch and ONNX Runtime intra-op), torch inter-op
    threads, OpenCV threads, the OpenMP wait policy in effect, and where the count came from
    (``"option"``, ``"env"``, ``"family"`` or ``"cpus"``)."""

    threads: int
    interop: int
    opencv: int
    wait_policy: str
    source: str


_applied: ThreadPolicy | None = None


def _cgroup_cpus() -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), None without one."""
    try:  # cgroup v2
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return max(1, -(-quota // period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (a container
    limited to 2 CPUs on a 64-core host gets 2)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, quota) if quota else n)


def prepare_env() -> bool:
    """Make idle OpenMP threads sleep (see the module doc), keeping values the user set.

    Effective only before torch is first imported; returns whether that was the case.
    """
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)
    early = "torch" not in sys.modules
    if not early:
        log.debug("torch was imported before the thread policy: OMP_WAIT_POLICY=%s may not apply",
                  os.environ.get("OMP_WAIT_POLICY"))
    return early


def _check(n: int, what: str) -> int:
    if not 1 <= n <= MAX_THREADS:
        raise TrtalkError(f"{what} must be between 1 and {MAX_THREADS}, got {n}")
    return n


def resolve_threads(threads: int | None = None, family_default: int | None = None) -> tuple[int, str]:
    """The compute thread count and where it came from: ``threads`` (the option), else
    ``$TRTALK_THREADS``, else ``family_default``, else :func:`usable_cpus` (at most torch's
    default)."""
    if threads is not None:
        return _check(int(threads), "--threads"), "option"
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise TrtalkError(f"{THREADS_ENV}={env!r} is not a whole number of threads") from None
        return _check(n, THREADS_ENV), "env"
    if family_default is not None:
        return _check(int(family_default), "the family's thread count"), "family"
    return min(usable_cpus(), _torch_default()), "cpus"


_TORCH_DEFAULT: int | None = None


def _torch_default() -> int:
    """torch's intra-op thread count before this module first changed it."""
    global _TORCH_DEFAULT
    if _TORCH_DEFAULT is None:
        import torch

        _TORCH_DEFAULT = max(1, torch.get_num_threads())
    return _TORCH_DEFAULT


def apply(threads: int | None = None, family_default: int | None = None) -> ThreadPolicy:
    """Apply the policy to this process (torch, OpenCV; ONNX Runtime sessions made afterwards
    through :func:`configure_ort`) and return it. Safe to call again (e.g. once the model family
    is known); the last call wins."""
    global _applied
    prepare_env()
    import cv2
    import torch

    n, source = resolve_threads(threads, family_default)
    _torch_default()  # remember torch's own default before changing it
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only possible before the inter-op pool first ran something
            log.debug("torch inter-op threads already started (%d)", torch.get_num_interop_threads())
    cv2.setNumThreads(1)
    _applied = ThreadPolicy(threads=n, interop=torch.get_num_interop_threads(), opencv=cv2.getNumThreads(),
                            wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), source=source)
    log.debug("CPU threads: %s", _applied)
    return _applied


def applied() -> ThreadPolicy | None:
    """The policy of the last :func:`apply` call in this process, None before."""
    return _applied


def ort_spinning() -> bool:
    """Whether ONNX Runtime workers may spin: only when the user asked for OMP_WAIT_POLICY=ACTIVE."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"


def configure_ort(options: Any, threads: int | None = None) -> Any:
    """Set an ``onnxruntime.SessionOptions`` to the policy: ``threads`` intra-op threads (None: the
    policy's count, i.e. torch's), one inter-op thread, no spinning (see :func:`ort_spinning`)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    spin = "1" if ort_spinning() else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


__all__ = ["MAX_THREADS", "OPENMP_ENV", "THREADS_ENV", "ThreadPolicy", "applied", "apply", "configure_ort",
           "ort_spinning", "prepare_env", "resolve_threads", "usable_cpus"]
