"""Fork server for the fuzz suite: runs `trtalk.cli.main(argv)` in forked, memory-capped children.

Started once per test module as ``python tests/fuzz_server.py`` (tests/test_fuzz.py does it). It
imports trtalk and its heavy dependencies (torch, mediapipe, PyAV, OpenCV) once, then reads one
JSON request per line on stdin and answers one JSON line on stdout per request:

    request: {"argv": [...], "cwd": "/dir", "timeout_s": 20, "as_headroom": 3221225472,
              "signal": {"signum": 15, "when_glob": "out/.*.tmp.*"}}   (signal: optional)
    answer:  {"rc": 2, "signal": null, "timed_out": false, "seconds": 0.4, "maxrss_mb": 512.0,
              "as_limit_mb": 4300.0, "stdout": "...", "stderr": "..."}

Each request is one ``os.fork()``: the child caps its address space with
``setrlimit(RLIMIT_AS, VmSize now + as_headroom)`` (so an allocation beyond the bound fails inside
the child, as a MemoryError / allocator error, instead of growing until the kernel kills it or the
machine), sends fds 1 and 2 to files (native libraries' output included), runs
``trtalk.cli.main(argv)`` and exits with its status. An exception escaping main is printed as a
traceback and exits 1, as the real console script would. The parent waits (``wait4``, which also
gives the child's peak RSS) and kills the child after ``timeout_s``. A request may ask for a
signal to be sent to the child after some seconds or once a file matching a glob appears (an
interrupted run must still leave nothing behind).

Why a fork server: a fresh ``python -m trtalk.cli`` pays ~5 s of imports per example (torch,
mediapipe); a fork of an already-imported process starts in milliseconds, runs the real in-process
code path, and still isolates every example (limits, crashes, global state, leaked files).

The server forks from a single-threaded process (checked at start): forking a process with live
OpenMP / thread pools is not safe. Nothing here is trtalk API; it only serves tests.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback


def _preload() -> None:
    import av  # noqa: F401
    import cv2  # noqa: F401
    import mediapipe  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import trtalk.audio  # noqa: F401
    import trtalk.cli
    import trtalk.face  # noqa: F401
    import trtalk.families.pcavs.checkpoint  # noqa: F401
    import trtalk.runtime.render  # noqa: F401
    import trtalk.runtime.stream  # noqa: F401

    trtalk.cli.build_parser()  # imports every subcommand module
    _import_what_a_run_imports()


# Commands whose lazily imported modules the server imports up front (built-in assets only).
_WARM_UP = (
    ["render", "-o", "{tmp}/warm.mp4", "--duration", "0.2"],
    ["stream", "--audio", "{audio}", "--fast", "--record", "{tmp}/warm2.mp4", "--duration", "0.2"],
)


def _import_what_a_run_imports() -> None:
    """Run `_WARM_UP` in a forked child and import here every module it imported.

    trtalk imports much of itself lazily (warp, engine, scipy ...): ~0.6 s on the first run,
    which every forked example would pay again. Only imports are copied over; the warm-up's
    threads and objects stay in the child.
    """
    import importlib

    from trtalk.runtime.render import DEFAULT_AUDIO

    before = set(sys.modules)
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryDirectory(prefix="trtalk-fuzz-warm-") as tmp:
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 0
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                import trtalk.cli

                for argv in _WARM_UP:
                    trtalk.cli.main([a.format(tmp=tmp, audio=DEFAULT_AUDIO) for a in argv])
                os.write(write_fd, "\n".join(sorted(set(sys.modules) - before)).encode())
            except BaseException:  # noqa: BLE001 - the warm-up is an optimisation only
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as f:
            names = f.read().decode().split()
        os.waitpid(pid, 0)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - e.g. a module that only imports inside its package
            pass


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _child(req: dict, out_path: str, err_path: str) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        os.close(fd_out)
        os.close(fd_err)
        os.chdir(req["cwd"])
        limit = _vm_size() + int(req["as_headroom"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import trtalk.cli

        try:
            code = int(trtalk.cli.main(list(req["argv"])) or 0)
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the console script would print
            traceback.print_exc()
            code = 1
    except BaseException:  # noqa: BLE001
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _read(path: str, limit: int = 200_000) -> str:
    with open(path, "rb") as f:
        data = f.read(limit)
    return data.decode("utf-8", "replace")


def _due(pending: dict, cwd: str, t0: float) -> bool:
    """Whether a requested signal is due: after ``after_s`` seconds, or once a file matching
    ``when_glob`` (relative to the request's cwd; start the name with "." to match hidden files) exists."""
    if "after_s" in pending and time.monotonic() - t0 >= float(pending["after_s"]):
        return True
    pattern = pending.get("when_glob")
    return bool(pattern) and bool(glob.glob(os.path.join(cwd, pattern)))


def _serve_one(req: dict, tmp: str) -> dict:
    out_path = os.path.join(tmp, "stdout")
    err_path = os.path.join(tmp, "stderr")
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(req, out_path, err_path)
    timed_out = False
    deadline = t0 + float(req.get("timeout_s", 30))
    pending = req.get("signal")  # {"signum": 15, "when_glob": ".*.tmp.*"} or {"signum": 2, "after_s": 1.5}
    signalled = None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if pending and _due(pending, req["cwd"], t0):
            os.kill(pid, int(pending["signum"]))
            signalled, pending = round(time.monotonic() - t0, 3), None
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    seconds = time.monotonic() - t0
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -sig
    return {"rc": rc, "signal": sig, "timed_out": timed_out, "signalled_at_s": signalled, "seconds": round(seconds, 3),
            "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "as_limit_mb": round((_vm_size() + int(req["as_headroom"])) / 2**20, 1),
            "stdout": _read(out_path), "stderr": _read(err_path)}


def main() -> int:
    _preload()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1 or threading.active_count() != 1:
        print(json.dumps({"error": f"fork server has {threads} threads after imports; "
                                   "forking is unsafe"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="trtalk-fuzz-") as tmp:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                answer = _serve_one(json.loads(line), tmp)
            except Exception as exc:  # noqa: BLE001 - a server bug: report it, keep serving
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
