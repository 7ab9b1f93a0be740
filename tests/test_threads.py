"""The CPU thread policy (trtalk/threads.py, issue 12 item 8): thread counts and wait policies are
set as the README documents. Each check runs in a fresh interpreter, since the OpenMP runtime reads
its environment once, when torch loads, and thread counts are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter of this tree."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "TRTALK_THREADS")}
    e["PYTHONPATH"] = str(ROOT)
    e.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Records the OpenMP environment at the moment torch is first imported, then runs the CLI's
# front-end policy call and reports every count the policy sets.
PROBE = r"""
import json, os, sys
seen = {}
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "wait" not in seen:
            seen["wait"] = os.environ.get("OMP_WAIT_POLICY")
            seen["blocktime"] = os.environ.get("KMP_BLOCKTIME")
        return None
sys.meta_path.insert(0, Hook())
import trtalk.cli
trtalk.cli.build_parser()  # imports every subcommand module (and torch)
from trtalk import threads
policy = threads.apply(*ARGS)
import cv2, torch, onnxruntime as ort
so = threads.configure_ort(ort.SessionOptions())
print(json.dumps({"seen": seen, "policy": policy.__dict__, "torch": torch.get_num_threads(),
                  "interop": torch.get_num_interop_threads(), "cv2": cv2.getNumThreads(),
                  "ort": so.intra_op_num_threads, "ort_inter": so.inter_op_num_threads,
                  "ort_spin": so.get_session_config_entry("session.intra_op.allow_spinning"),
                  "cpus": threads.usable_cpus()}))
"""


def _probe(args: str = "", env: dict[str, str] | None = None) -> dict:
    return _run(PROBE.replace("ARGS", f"({args},)" if args else "()"), env)


def test_cli_policy_defaults() -> None:
    """Default: idle OpenMP threads sleep (set before torch loads), compute threads = usable
    cores (at most torch's default), one inter-op and one OpenCV thread, ONNX Runtime matches
    torch and does not spin."""
    r = _probe()
    assert r["seen"] == {"wait": "PASSIVE", "blocktime": "0"}
    n = r["cpus"]
    assert r["policy"]["source"] == "cpus"
    assert r["torch"] == r["policy"]["threads"] == r["ort"] and 1 <= r["torch"] <= n
    assert r["interop"] == 1 and r["cv2"] == 1 and r["ort_inter"] == 1
    assert r["ort_spin"] == "0"


def test_option_and_user_wait_policy() -> None:
    """--threads sets torch and ONNX Runtime alike; a user's OMP_WAIT_POLICY is kept (ACTIVE lets
    ONNX Runtime spin too)."""
    r = _probe("3", {"TRTALK_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert r["policy"]["source"] == "option" and r["torch"] == r["ort"] == 3
    assert r["seen"]["wait"] == "ACTIVE" and r["ort_spin"] == "1"


def test_thread_count_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads, else $TRTALK_THREADS, else the family's default, else the usable cores."""
    from trtalk.threads import resolve_threads, usable_cpus

    monkeypatch.setenv("TRTALK_THREADS", "2")
    assert resolve_threads(3, 1) == (3, "option")
    assert resolve_threads(None, 1) == (2, "env")
    monkeypatch.delenv("TRTALK_THREADS")
    assert resolve_threads(None, 1) == (1, "family")
    n, source = resolve_threads()
    assert source == "cpus" and 1 <= n <= usable_cpus()


def test_family_defaults() -> None:
    """The warp avatar on torch runs one thread; PC-AVS the usable cores."""
    from trtalk.runtime.options import ModelOptions

    assert ModelOptions().family_threads() == 1  # no checkpoint: the warp avatar
    assert ModelOptions(model="warp", backend="onnxruntime").family_threads() is None
    assert ModelOptions(model="pcavs").family_threads() is None


def test_bad_thread_counts_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtalk.errors import TrtalkError
    from trtalk.threads import resolve_threads

    monkeypatch.setenv("TRTALK_THREADS", "many")
    with pytest.raises(TrtalkError, match="TRTALK_THREADS='many' is not a whole number"):
        resolve_threads()
    monkeypatch.setenv("TRTALK_THREADS", "0")
    with pytest.raises(TrtalkError, match="between 1 and"):
        resolve_threads()
    with pytest.raises(TrtalkError, match="--threads must be between 1 and"):
        resolve_threads(100000)


def test_stream_applies_the_policy(tmp_path: Path) -> None:
    """`trtalk stream --threads 1` sets the counts before the model opens (checked by the family
    opening hook) -- the front ends call the policy, not only the library."""
    code = r"""
import json, sys
from trtalk import cli, threads
from trtalk.runtime import options
seen = {}
orig = options.ModelOptions.open
def spy(self, fps=25.0, **kw):
    import cv2, torch
    seen.update(torch=torch.get_num_threads(), cv2=cv2.getNumThreads(), policy=threads.applied().__dict__)
    raise SystemExit(0)
options.ModelOptions.open = spy
try:
    cli.main(["stream", "--audio", sys.argv[1], "--sink", "null", "--threads", "1", "--fast"])
except SystemExit:
    pass
print(json.dumps(seen))
"""
    from conftest import make_speech_wave, write_wav

    wav = tmp_path / "a.wav"
    write_wav(wav, make_speech_wave(0.5))
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TRTALK_THREADS")}
    e["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code, str(wav)], env=e, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["torch"] == 1 and r["cv2"] == 1 and r["policy"]["source"] == "option"
