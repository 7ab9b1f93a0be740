"""Fuzz suite (issue 12): hostile files and option values through the real `trtalk` command line.

Inputs: media files mutated from valid seeds (truncated, bit-flipped, zero-length, spliced onto
another container's head, renamed to a wrong extension) and headers claiming huge dimensions
(PNG, JPEG, BMP, WebP, Y4M); checkpoint files with random `config` metadata and random tensor
headers; random values for the options of `render` and `stream` (numbers, paths, choices); a
signal in the middle of a run.

Properties, for every example:

1. the exit status is 0 or 2 (2 ends with one ``trtalk: error: ...`` line);
2. no traceback on stderr (an escaped exception, also one printed by a thread);
3. no allocation beyond a bound: each run is a fork with ``RLIMIT_AS`` = its address space at the
   fork + ``AS_HEADROOM`` (3 GiB; a PC-AVS small-config run needs about 1.8 GiB of it), so a
   larger allocation fails inside the run (MemoryError or an allocator error, which then breaks
   1 or 2) instead of growing until the kernel kills something;
4. no leftover: a failed run leaves the output folder as it found it (empty), a successful one
   only the outputs asked for, each a complete, readable file (no hidden temporary files);
5. it ends: a run still going after ``TIMEOUT_S`` is killed and fails the example.

How it runs: tests/fuzz_server.py is started once per module; it imports trtalk, torch,
mediapipe, PyAV and OpenCV (about 5 s) and then forks one child per example, which calls
``trtalk.cli.main(argv)`` in-process (milliseconds to start, instead of ~5 s of imports for a fresh
``python -m trtalk.cli``), with the memory cap, its stdout/stderr captured at the file-descriptor
level (native libraries' output included) and its peak RSS reported.

Bounded for CI: the "ci" hypothesis profile (the default) runs few, derandomized examples and no
shrinking; ``TRTALK_FUZZ=long`` selects the "long" profile (20x the examples, random seeds,
shrinking). scripts/fuzz.sh runs the long profile.

Known failures of the current code are listed in ``KNOWN_BAD``: each has a deterministic
``xfail(strict=True)`` test here, and the random tests keep away from those inputs while the entry
is there. When a fix lands, the xfail test passes, which strict mode reports as a failure: then
delete the entry, and the random tests cover those inputs as well.
"""

from __future__ import annotations

import datetime
import json
import re
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.fuzz

if sys.platform != "linux":
    pytest.skip("the fuzz server forks and reads /proc (Linux)", allow_module_level=True)
hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (pip install -e .[test])")
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import trtalk  # noqa: E402
from conftest import head_motion_frames, mp3_encoder, write_audio_file, write_video, write_wav  # noqa: E402

# --------------------------------------------------------------------------- profiles and bounds

TIMEOUT_S = 60.0  # a run longer than this is a hang (the slowest valid example takes ~5 s)
AS_HEADROOM = 3 << 30  # bytes of address space a run may add to what it had at the fork
LONG_FACTOR = 20

settings.register_profile(
    "ci", max_examples=8, derandomize=True, database=None, deadline=datetime.timedelta(seconds=TIMEOUT_S + 30),
    phases=(Phase.explicit, Phase.generate), print_blob=True,
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large))
settings.register_profile(
    "long", max_examples=8 * LONG_FACTOR, derandomize=False, deadline=datetime.timedelta(seconds=TIMEOUT_S + 30),
    print_blob=True, suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large))
PROFILE = os.environ.get("TRTALK_FUZZ", "ci")
LOG = os.environ.get("TRTALK_FUZZ_LOG")  # a file: every run appended as one JSON line
if PROFILE not in ("ci", "long"):
    raise ValueError(f"TRTALK_FUZZ={PROFILE!r}: use ci or long")


def fuzz(ci_examples: int) -> settings:
    """The profile's settings with ``ci_examples`` examples (times LONG_FACTOR in the long one)."""
    n = ci_examples if PROFILE == "ci" else ci_examples * LONG_FACTOR
    return settings(settings.get_profile(PROFILE), max_examples=n)


# Known failures (issue 12); see the module docstring for how to retire an entry.
KNOWN_BAD: dict[str, str] = {}


def known_bad(key: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(key in KNOWN_BAD, reason=KNOWN_BAD.get(key, ""), strict=True)


# --------------------------------------------------------------------------- the fork server


@dataclass
class Run:
    argv: list[str]
    rc: int
    signal: int | None
    timed_out: bool
    seconds: float
    maxrss_mb: float
    stdout: str
    stderr: str
    timeout_s: float = TIMEOUT_S
    signalled_at_s: float | None = None  # when the requested signal was sent (None: never)

    def describe(self) -> str:
        tail = "\n".join(self.stderr.strip().split("\n")[-25:])
        return (f"trtalk {' '.join(map(repr, self.argv))}\n  exit {self.rc}"
                f"{' (killed after the timeout)' if self.timed_out else ''}, {self.seconds:.1f} s, "
                f"peak RSS {self.maxrss_mb:.0f} MB\n  stderr:\n{tail}")


class ForkServer:
    """Client of tests/fuzz_server.py (see there): one forked `trtalk.cli.main` per `run`."""

    def __init__(self) -> None:
        root = str(Path(trtalk.__file__).resolve().parents[1])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fuzz_server.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = self._answer()
        if not hello.get("ready"):
            raise RuntimeError(f"fuzz server did not start: {hello}")

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fuzz server exited (status {self.proc.wait()})")
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, signal_when: dict | None = None,
            timeout_s: float = TIMEOUT_S) -> Run:
        """Run ``trtalk argv`` in ``cwd``; ``signal_when``: see fuzz_server.py (``signal``)."""
        req = {"argv": argv, "cwd": str(cwd), "timeout_s": timeout_s, "as_headroom": AS_HEADROOM}
        if signal_when:
            req["signal"] = signal_when
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ans = self._answer()
        if "error" in ans:
            raise RuntimeError(f"fuzz server: {ans['error']}")
        if LOG:  # one JSON line per run: what the examples reached (scripts/fuzz.sh summarises)
            last = ans["stderr"].strip().split("\n")[-1][:200]
            with open(LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                                    "argv": argv, "rc": ans["rc"], "seconds": ans["seconds"],
                                    "maxrss_mb": ans["maxrss_mb"], "last": last}) + "\n")
        return Run(argv, ans["rc"], ans["signal"], ans["timed_out"], ans["seconds"], ans["maxrss_mb"],
                   ans["stdout"], ans["stderr"], timeout_s, ans.get("signalled_at_s"))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def cli() -> ForkServer:
    server = ForkServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- properties


def _tree(root: Path) -> list[str]:
    """Everything under an example's folder but its inputs (``in/``) and the ``out/`` folder itself."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.relative_to(root).parts[0] != "in" and p != root / "out")


def check(run: Run, root: Path, outputs: tuple[str, ...] = (), *, interrupted: bool = False) -> None:
    """Assert the properties of the module docstring for ``run`` in example folder ``root``.

    ``outputs``: the files (relative to ``root``, e.g. ``out/x.mp4``) a successful run may leave,
    with the folders above them; ``interrupted``: the run got SIGINT or SIGTERM, so 130 / 143 (or
    death by that signal) are clean endings too.
    """
    assert not run.timed_out, f"did not end within {run.timeout_s:.0f} s:\n{run.describe()}"
    traceback = "Traceback (most recent call last)" in run.stderr
    assert not traceback, f"traceback:\n{run.describe()}"
    ok = {0, 2} | ({130, 143, -signal.SIGINT, -signal.SIGTERM} if interrupted else set())
    clean_exit = run.rc in ok
    assert clean_exit, (f"exit {run.rc} (want {sorted(ok)}; with the {AS_HEADROOM >> 30} GiB "
                          f"address-space cap an over-allocation shows up here):\n{run.describe()}")
    if run.rc == 2:
        # "\n" only: str.splitlines() also splits at \x1c-\x1e, \x85 ..., which file names may hold.
        last = run.stderr.strip().split("\n")[-1]
        one_line_error = "error: " in last and last.startswith("trtalk")
        assert one_line_error, f"no one-line error:\n{run.describe()}"
    allowed: set[str] = set()
    if run.rc == 0 or interrupted:
        for name in outputs:
            p = Path(name)
            allowed |= {p.as_posix()} | {q.as_posix() for q in p.parents if q != Path(".")}
    left = _tree(root)
    extra = [p for p in left if p not in allowed]
    assert extra == [], f"left behind: {extra}\n{run.describe()}"
    for name in left:
        if (root / name).is_file():
            _check_complete(root / name, run)


def _check_complete(path: Path, run: Run) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
        return
    from trtalk.media.read import probe

    info = probe(path)  # raises TrtalkError on a truncated or empty file
    assert info.has_video and (info.num_frames or 0) >= 1, f"{path.name} has no frames:\n{run.describe()}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_runs")


class Example:
    """A fresh folder for one example: ``in/`` for its inputs, ``out/`` for the run's outputs."""

    def __init__(self, work: Path) -> None:
        self.root = Path(tempfile.mkdtemp(dir=work))
        self.inp = self.root / "in"
        self.out = self.root / "out"
        self.inp.mkdir()
        self.out.mkdir()

    def write(self, name: str, data: bytes) -> Path:
        path = self.inp / name
        path.write_bytes(data)
        return path

    def __enter__(self) -> Example:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- seed files

SPEECH_S = 0.4  # every run renders 10 frames: inputs are short so examples are quick


def _y4m(frames: list[np.ndarray], fps: int = 25) -> bytes:
    """Raw 4:2:0 YUV4MPEG2 bytes of RGB frames (even sizes)."""
    h, w = frames[0].shape[:2]
    out = [f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode()]
    for rgb in frames:
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        out += [b"FRAME\n", yuv.tobytes()]
    return b"".join(out)


class Seeds:
    """Valid inputs (bytes) that the fuzzers mutate, and good files for the other inputs.

    A plain class, not a dataclass: hypothesis prints a failing example's arguments, and it would
    print a dataclass field by field (megabytes of bytes) instead of this ``__repr__``.
    """

    def __init__(self, images: dict[str, bytes], videos: dict[str, bytes], audios: dict[str, bytes],
                 face: Path, speech: Path) -> None:
        self.images, self.videos, self.audios = images, videos, audios
        self.face, self.speech = face, speech

    def __repr__(self) -> str:
        return (f"Seeds(images={sorted(self.images)}, videos={sorted(self.videos)}, "
                f"audios={sorted(self.audios)}, face={self.face.name}, speech={self.speech.name})")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    d = tmp_path_factory.mktemp("fuzz_seeds")
    bgr = cv2.imread(str(Path(trtalk.__file__).parent / "assets" / "astronaut.png"), cv2.IMREAD_COLOR)
    small = cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_AREA)
    images = {ext: cv2.imencode(ext, small)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp")}
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    frames = head_motion_frames(rgb, 8, size=128)
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 180 * np.arange(int(SPEECH_S * 16000)) / 16000)
              * (1 + 0.1 * rng.standard_normal(int(SPEECH_S * 16000)))).astype(np.float32)
    write_video(d / "pose.mp4", frames)
    write_video(d / "talking.mp4", frames[:int(SPEECH_S * 25)], audio=speech)
    videos = {".mp4": (d / "pose.mp4").read_bytes(), ".y4m": _y4m(frames[:4])}
    write_wav(d / "speech.wav", speech)
    write_audio_file(d / "speech.m4a", speech, "aac")
    audios = {".wav": (d / "speech.wav").read_bytes(), ".m4a": (d / "speech.m4a").read_bytes(),
              ".mp4": (d / "talking.mp4").read_bytes()}
    if mp3_encoder():
        write_audio_file(d / "speech.mp3", speech, mp3_encoder())
        audios[".mp3"] = (d / "speech.mp3").read_bytes()
    face = d / "face.png"
    face.write_bytes(images[".png"])
    return Seeds(images, videos, audios, face, d / "speech.wav")


# --------------------------------------------------------------------------- strategies

MEDIA_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".mp4", ".mov", ".mkv", ".avi", ".y4m",
                    ".wav", ".mp3", ".m4a", ".txt", "")


class Media:
    """A fuzzed file: its bytes, the extension it is saved under, and how it was made (what a
    failing example prints: the recipe, not megabytes of bytes; a plain class, see `Seeds`)."""

    def __init__(self, data: bytes, ext: str, recipe: tuple[str, ...]) -> None:
        self.data, self.ext, self.recipe = data, ext, recipe

    def __repr__(self) -> str:
        return f"Media(ext={self.ext!r}, recipe={self.recipe!r})"


@st.composite
def mutated(draw: st.DrawFn, pool: dict[str, bytes], others: dict[str, bytes] | None = None) -> Media:
    """A seed from ``pool`` with 1 or 2 mutations, under its own extension or (one time in four)
    another one; ``others``: seeds whose heads "splice" may put on the body."""
    ext = draw(st.sampled_from(sorted(pool)))
    data = pool[ext]
    recipe = [f"seed {ext} ({len(data)} bytes)"]
    # Light damage (a few flipped bits, a cut) most often: it gets past the container into the
    # decoders and the face pipeline; the rest rarely gets past the first check.
    ops = ("flip",) * 4 + ("truncate",) * 3 + ("splice", "insert", "zero")
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=2)):
        if op == "truncate":
            n = draw(st.integers(0, len(data)))
            data = data[:n]
            recipe.append(f"truncate to {n}")
        elif op == "flip" and data:
            head = draw(st.booleans())  # headers are where parsers decide; flip there half the time
            flips = []
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, min(len(data), 512) - 1 if head else len(data) - 1))
                bit = draw(st.integers(0, 7))
                data = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
                flips.append(f"{i}^{1 << bit}")
            recipe.append("flip " + " ".join(flips))
        elif op == "zero":
            data = b""
            recipe.append("zero length")
        elif op == "splice":  # another container's head on this body: the wrong container
            key = draw(st.sampled_from(sorted(others or pool)))
            other = (others or pool)[key]
            cut = draw(st.integers(0, min(len(other), 4096)))
            data = other[:cut] + data[cut:]
            recipe.append(f"first {cut} bytes from {key}")
        elif op == "insert" and data:
            i = draw(st.integers(0, len(data)))
            junk = draw(st.binary(min_size=1, max_size=64))
            data = data[:i] + junk + data[i:]
            recipe.append(f"insert {junk!r} at {i}")
    if draw(st.integers(0, 3)) == 0:
        ext = draw(st.sampled_from(MEDIA_EXTENSIONS))
        recipe.append(f"named {ext or 'without extension'}")
    return Media(data, ext, tuple(recipe))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header(kind: str, w: int, h: int, body: bytes = b"") -> bytes:
    """A file of ``kind`` whose header claims ``w`` x ``h`` pixels, with (almost) no pixel data."""
    if kind == "png":
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b""))
    if kind == "jpg":  # baseline frame header (SOF0) and a cut-off scan
        sof = struct.pack(">BBHBHHB", 0xFF, 0xC0, 17, 8, h & 0xFFFF, w & 0xFFFF, 3) + bytes(
            [1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
        return b"\xff\xd8" + sof + b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00" + body
    if kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54) + info + body
    if kind == "webp":
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + (
            h - 1).to_bytes(3, "little")
        return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    if kind == "y4m":
        return f"YUV4MPEG2 W{w} H{h} F25:1 C420jpeg\nFRAME\n".encode() + body
    raise ValueError(kind)


HUGE_EXT = {"png": ".png", "jpg": ".jpg", "bmp": ".bmp", "webp": ".webp", "y4m": ".y4m"}


@st.composite
def huge(draw: st.DrawFn) -> Media:
    kind = draw(st.sampled_from(sorted(HUGE_EXT)))
    hi = 0xFFFF if kind == "jpg" else (1 << 24) if kind == "webp" else (1 << 31) - 1
    # Over the 100 MP cap on one side, anywhere, or small enough that a decoder is reached.
    side = st.one_of(st.integers(10_001, hi), st.integers(1, hi), st.integers(1, 4096))
    w, h = draw(side), draw(side)
    if kind == "y4m":  # FFmpeg refuses odd 4:2:0 sizes outright; keep them even to reach the decoder
        w, h = max(2, w & ~1), max(2, h & ~1)
    body = draw(st.binary(max_size=256))
    ext = HUGE_EXT[kind] if draw(st.integers(0, 3)) else draw(st.sampled_from(MEDIA_EXTENSIONS))
    return Media(huge_header(kind, w, h, body), ext, (f"{kind} header {w}x{h}", f"{len(body)} bytes of data"))


# --------------------------------------------------------------------------- media fuzzing


def render_argv(out: str = "out/x.mp4", **files: Path) -> list[str]:
    argv = ["render", "-o", out]
    for flag, path in files.items():
        argv += [f"--{flag}", str(path)]
    return argv


def _run_render(cli: ForkServer, work: Path, name: str, blob: bytes, flag: str, **files: Path) -> None:
    with Example(work) as ex:
        path = ex.write(name, blob)
        run = cli.run(render_argv(**{flag: path}, **files), ex.root)
        check(run, ex.root, ("out/x.mp4",))


@pytest.mark.parametrize("kind, w, h, body", [
    ("png", 60000, 60000, b""),  # over OpenCV's own 2**30 pixel limit (a cv2.error, once)
    ("png", 30000, 30000, b"\0" * 1000),
    ("jpg", 20000, 20000, b"\0" * 1000),  # libjpeg pads a cut-off scan: a full 1.2 GB decode, once
    ("jpg", 9999, 9999, b""),  # just under the 100 MP cap: decoded (padded), no face, exit 2
    ("bmp", 40000, 40000, b""),
    ("webp", 1 << 24, 1 << 24, b""),
    ("y4m", 16000, 16000, b"\x80" * 1000),  # FFmpeg accepts the size; the frame never comes
], ids=lambda v: str(v)[:8])
def test_face_huge_header(cli: ForkServer, seeds: Seeds, work: Path, kind: str, w: int, h: int,
                          body: bytes) -> None:
    """A face file whose header claims huge dimensions is refused before a decoder allocates."""
    _run_render(cli, work, "face" + HUGE_EXT[kind], huge_header(kind, w, h, body), "face", audio=seeds.speech)


@fuzz(10)
@given(data=st.data())
def test_face_media(cli: ForkServer, seeds: Seeds, work: Path, data: st.DataObject) -> None:
    """`render --face FILE`: a mutated image or video, or a header claiming huge dimensions."""
    media = data.draw(st.one_of(mutated({**seeds.images, **seeds.videos}, seeds.audios), huge()))
    _run_render(cli, work, "face" + media.ext, media.data, "face", audio=seeds.speech)


@fuzz(6)
@given(data=st.data())
def test_pose_media(cli: ForkServer, seeds: Seeds, work: Path, data: st.DataObject) -> None:
    """`render --pose FILE`: a mutated video (partly decodable ones included)."""
    media = data.draw(mutated(seeds.videos, seeds.images))
    _run_render(cli, work, "pose" + media.ext, media.data, "pose", audio=seeds.speech, face=seeds.face)


@fuzz(8)
@given(data=st.data())
def test_audio_media(cli: ForkServer, seeds: Seeds, work: Path, data: st.DataObject) -> None:
    """`render --audio FILE` and `stream --audio FILE`: a mutated wav, mp3, m4a or video."""
    media = data.draw(mutated(seeds.audios, seeds.videos))
    with Example(work) as ex:
        audio = ex.write("speech" + media.ext, media.data)
        if data.draw(st.booleans(), label="stream"):
            argv = ["stream", "--audio", str(audio), "--fast", "--record", "out/x.mp4"]
        else:
            argv = render_argv(audio=audio)
        check(cli.run(argv, ex.root), ex.root, ("out/x.mp4",))


# --------------------------------------------------------------------------- option values

_SPECIAL_FLOATS = ("nan", "inf", "-inf", "-0", "0", "1e-300", "5e-324", "1e300", "1e9", "-1", "0.5")


def _number_text(integer: bool) -> st.SearchStrategy[str]:
    """A number as typed: mostly plausible ones, then extremes and special values, rarely text."""
    plausible = st.integers(-2, 64).map(str) if integer else st.floats(-1, 120).map(lambda v: f"{v:.3g}")
    extreme = (st.integers(-(1 << 70), 1 << 70) if integer else
               st.floats(allow_nan=True, allow_infinity=True, width=64)).map(repr)
    return st.one_of(plausible, plausible, plausible, extreme, st.sampled_from(_SPECIAL_FLOATS),
                     st.text(max_size=8))


_VIDEO_EXT = (".mp4", ".mp4", ".mov", ".mkv", ".m4v", ".MP4", ".gif", ".wav", "")


def _file_name(max_bytes: int) -> st.SearchStrategy[str]:
    """Any characters a file name may hold, mostly with a video extension (the rest is refused
    before anything runs)."""
    stem = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=80)
    return st.builds(lambda a, b: a + b, stem, st.sampled_from(_VIDEO_EXT)).filter(
        lambda n: len(n.encode()) <= max_bytes and n not in (".", ".."))


# flag -> value strategy (text, as a user types it); None: a switch without a value.
_COMMON: dict[str, st.SearchStrategy[str] | None] = {
    "--fps": _number_text(False),
    "--duration": _number_text(False),
    "--batch": _number_text(True),
    "--layout": st.sampled_from(("generated", "side-by-side", "mosaic", "")),
    "--paste-back": None,
    "--audio-gain": _number_text(False),
    "--pose-smoothing": _number_text(False),
    "--audio-timeout-s": _number_text(False),
    "--max-delay-s": _number_text(False),
    "--lost-hold-s": _number_text(False),
    "--lost-ease-s": _number_text(False),
    "--camera-timeout-s": _number_text(False),
    "--model": st.sampled_from(("warp", "pcavs", "stylegan")),
    "--backend": st.sampled_from(("torch", "onnxruntime", "tensorrt", "jax")),
    "--device": st.sampled_from(("cpu", "cuda", "cuda:7", "banana", "cpu:0", "")),
    "--precision": st.sampled_from(("fp32", "fp16", "int8")),
    "--noise": st.sampled_from(("fixed", "random", "zero", "loud")),
    "--cuda-graphs": None,
    "--seed": _number_text(True),
}


def _safe_value(flag: str, value: str | None) -> bool:
    """False for inputs of a KNOWN_BAD entry (kept out of the random tests while it is listed)."""
    try:
        number = float(value or "")
    except ValueError:
        return True  # not a number: argparse refuses it
    if flag == "--audio-gain" and "audio_gain_overflow" in KNOWN_BAD:
        return not number > 1e100
    return True


@st.composite
def option_argv(draw: st.DrawFn, seeds: Seeds) -> tuple[list[str], tuple[str, ...]]:
    """(argv, outputs) of `render` or `stream` with random option values and output paths."""
    command = draw(st.sampled_from(("render", "stream")))
    max_name = 255 if "long_file_name" in KNOWN_BAD else 400
    name = draw(st.one_of(st.sampled_from(("x.mp4", "x.gif", "x", ".x.mp4", "x.mp4.tmp")), _file_name(max_name)))
    folders = ["out/{}", "out/sub/{}", "out/{}/", "{}"]
    if command == "stream" and "failed_stream_leaves_folder" in KNOWN_BAD:
        folders.remove("out/sub/{}")
    out_path = draw(st.sampled_from(folders)).format(name)
    outputs: tuple[str, ...] = (Path(out_path).as_posix(),)  # Path drops a trailing "/"
    if command == "render":
        argv = ["render", "-o", out_path, "--audio", str(seeds.speech), "--face", str(seeds.face)]
    else:
        argv = ["stream", "--audio", str(seeds.speech), "--record", out_path,
                draw(st.sampled_from(("--fast", "--realtime")))]
        if draw(st.booleans()):
            stats = draw(st.sampled_from(("out/stats.json", "out/", "out/missing/s.json")))
            argv += ["--stats-json", stats]
            outputs += (stats,)
    flags = draw(st.lists(st.sampled_from(sorted(_COMMON)), max_size=5, unique=True))
    for flag in flags:
        strategy = _COMMON[flag]
        value = None if strategy is None else draw(strategy)
        if not _safe_value(flag, value):
            continue
        argv += [flag] if value is None else [f"{flag}={value}"]
    if "--model=pcavs" in argv:
        argv += ["--model-config", "small"]  # never the full-size networks (seconds each)
    return argv, outputs


@fuzz(16)
@given(data=st.data())
def test_option_values(cli: ForkServer, seeds: Seeds, work: Path, data: st.DataObject) -> None:
    """`render` / `stream` with random option values (numbers, special floats, text, choices) and
    output paths (odd names, missing folders, folders as files)."""
    argv, outputs = data.draw(option_argv(seeds))
    with Example(work) as ex:
        check(cli.run(argv, ex.root), ex.root, outputs)


@known_bad("audio_gain_overflow")
def test_audio_gain_overflow(cli: ForkServer, seeds: Seeds, work: Path) -> None:
    for gain in ("inf", "1e308"):
        with Example(work) as ex:
            argv = render_argv(audio=seeds.speech, face=seeds.face) + [f"--audio-gain={gain}"]
            # 10 frames take about a second; the hang is cut short so the xfail stays cheap.
            check(cli.run(argv, ex.root, timeout_s=10), ex.root, ("out/x.mp4",))


def test_max_delay_nonfinite(cli: ForkServer, seeds: Seeds, work: Path) -> None:
    for value in ("nan", "inf", "-inf"):
        with Example(work) as ex:
            argv = ["stream", "--audio", str(seeds.speech), "--realtime", "--record", "out/x.mp4",
                    f"--max-delay-s={value}"]
            check(cli.run(argv, ex.root), ex.root, ("out/x.mp4",))


def test_failed_stream_leaves_no_folder(cli: ForkServer, seeds: Seeds, work: Path) -> None:
    with Example(work) as ex:
        argv = ["stream", "--audio", str(seeds.speech), "--fast", "--record", "out/sub/x.mp4", "--cuda-graphs"]
        check(cli.run(argv, ex.root), ex.root, ("out/sub/x.mp4",))


@known_bad("long_file_name")
def test_long_output_name(cli: ForkServer, seeds: Seeds, work: Path) -> None:
    with Example(work) as ex:
        run = cli.run(render_argv(out="out/" + "a" * 300 + ".mp4", audio=seeds.speech), ex.root)
        check(run, ex.root, ())


# --------------------------------------------------------------------------- checkpoints

SMALL_CONFIG = {"clip_len": 1, "crop_size": 224, "mouth_weight": 1.2, "num_classes": 5830, "pose_dim": 12,
                "style_dim": 2560, "gen_channels": {"7": 512, "14": 64, "28": 64, "56": 32, "112": 32, "224": 16}}

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                         st.sampled_from((0, -1, 1 << 31, 10 ** 6, 10 ** 12)))
_json_value = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=8)


@st.composite
def config_text(draw: st.DrawFn) -> str:
    """The ``config`` metadata: mutated small-config JSON, random JSON or random text."""
    kind = draw(st.sampled_from(("mutated", "mutated", "mutated", "json", "text")))
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "json":
        return json.dumps(draw(_json_value))
    cfg = json.loads(json.dumps(SMALL_CONFIG))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("drop", "add", "value", "channel")))
        key = draw(st.sampled_from(sorted(cfg) or ["style_dim"]))
        if op == "drop":
            cfg.pop(key, None)
        elif op == "add":
            cfg[draw(st.text(min_size=1, max_size=12))] = draw(_json_value)
        elif op == "value":
            cfg[key] = draw(_json_value)
        elif isinstance(cfg.get("gen_channels"), dict):
            ch = cfg["gen_channels"]
            ch[draw(st.sampled_from(sorted(ch) + ["3", "448", "-7", "x"]))] = draw(
                st.one_of(st.integers(-(1 << 40), 1 << 40), st.sampled_from((0, 1, 4096, 10 ** 6)), _json_value))
    return json.dumps(cfg)


@st.composite
def checkpoint_metadata(draw: st.DrawFn) -> dict[str, str]:
    # Mostly the right format and version, so that the config itself is what gets checked.
    meta = {"format": draw(st.sampled_from(("trtalk.pcavs",) * 6 + ("trtalk.other", ""))),
            "format_version": draw(st.sampled_from(("1",) * 6 + ("2", "x")))}
    if draw(st.integers(0, 5)):
        meta["config"] = draw(config_text())
    return meta


def _tiny_tensors() -> dict:
    import torch

    return {"G.x": torch.zeros(3), "V.fc.weight": torch.zeros(2, 2)}


def _checkpoint_argv(draw_render: bool, path: Path) -> list[str]:
    if draw_render:
        return ["render", "--checkpoint", str(path), "-o", "out/x.mp4", "--duration", "0.2"]
    return ["convert", str(path), "-o", "out/c.safetensors"]


@fuzz(6)
@given(meta=checkpoint_metadata(), render=st.booleans())
@example(meta={"format": "trtalk.pcavs"}, render=False)  # no config at all
def test_checkpoint_metadata(cli: ForkServer, work: Path, meta: dict[str, str], render: bool) -> None:
    """A trtalk .safetensors file with random ``format`` / ``config`` metadata."""
    from safetensors.torch import save_file

    with Example(work) as ex:
        path = ex.inp / "ck.safetensors"
        save_file(_tiny_tensors(), str(path), metadata=meta)
        run = cli.run(_checkpoint_argv(render, path), ex.root)
        check(run, ex.root, ("out/c.safetensors", "out/x.mp4"))


def _meta(config: dict | str) -> dict[str, str]:
    return {"format": "trtalk.pcavs", "format_version": "1",
            "config": config if isinstance(config, str) else json.dumps(config)}


@pytest.mark.parametrize("meta", [
    {"format": "trtalk.pcavs"},
    _meta("{not json"),
    _meta([1, 2]),
    _meta({**SMALL_CONFIG, "bogus_option": 1}),  # also what a newer trtalk's file looks like
    _meta({**SMALL_CONFIG, "num_classes": 10 ** 12}),  # 8 PB: refused by the allocator
    _meta({**SMALL_CONFIG, "num_classes": 400_000}),  # 3.3 GB: only the cap stops it
    _meta({**SMALL_CONFIG, "gen_channels": {**SMALL_CONFIG["gen_channels"], "14": 10 ** 6}}),
    _meta({**SMALL_CONFIG, "num_classes": -5}),
    _meta({**SMALL_CONFIG, "crop_size": "abc"}),
    _meta({**SMALL_CONFIG, "crop_size": 0}),
], ids=["no-config", "bad-json", "list", "unknown-key", "huge", "oversized", "huge-channels",
        "negative", "wrong-type", "zero-size"])
def test_checkpoint_metadata_cases(cli: ForkServer, work: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with Example(work) as ex:
        path = ex.inp / "ck.safetensors"
        save_file(_tiny_tensors(), str(path), metadata=meta)
        check(cli.run(_checkpoint_argv(False, path), ex.root), ex.root, ("out/c.safetensors",))


_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "X9", "")


@st.composite
def safetensors_bytes(draw: st.DrawFn) -> bytes:
    """A safetensors file with valid trtalk metadata and random tensor entries / header length."""
    header: dict = {"__metadata__": _meta(SMALL_CONFIG)}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(("G.x", "V.fc.weight", "A_sync.a", "bogus")), st.text(max_size=10)))
        shape = draw(st.lists(st.one_of(st.integers(0, 8), st.integers(-(1 << 63), 1 << 64)), max_size=4))
        start = draw(st.one_of(st.integers(0, 64), st.integers(-(1 << 63), 1 << 64)))
        end = draw(st.one_of(st.integers(0, 256), st.integers(-(1 << 63), 1 << 64)))
        header[name] = {"dtype": draw(st.sampled_from(_DTYPES)), "shape": shape, "data_offsets": [start, end]}
    text = json.dumps(header).encode()
    text += b" " * draw(st.integers(0, 7))
    length = len(text) if draw(st.integers(0, 3)) else draw(st.integers(0, (1 << 64) - 1))
    return struct.pack("<Q", length) + text + draw(st.binary(max_size=256))


@fuzz(8)
@given(blob=safetensors_bytes(), render=st.booleans())
def test_checkpoint_tensor_header(cli: ForkServer, work: Path, blob: bytes, render: bool) -> None:
    """A .safetensors file whose tensor entries (dtype, shape, offsets) and header length are random."""
    with Example(work) as ex:
        path = ex.write("ck.safetensors", blob)
        check(cli.run(_checkpoint_argv(render, path), ex.root), ex.root, ("out/c.safetensors", "out/x.mp4"))


# --------------------------------------------------------------------------- interrupted runs


@pytest.mark.parametrize("command, signum", [
    ("render", signal.SIGTERM),
    ("render", signal.SIGINT),
    ("stream", signal.SIGTERM),
    ("stream", signal.SIGINT),
], ids=lambda v: getattr(v, "name", v))
def test_interrupted_run_leaves_nothing(cli: ForkServer, work: Path, command: str, signum: int) -> None:
    """SIGINT / SIGTERM once the output's temporary file exists: a render leaves nothing, a
    real-time stream recording is finalised (a complete mp4), neither leaves the temporary file."""
    from trtalk.runtime.render import DEFAULT_AUDIO

    with Example(work) as ex:
        if command == "render":
            argv, outputs = ["render", "-o", "out/x.mp4"], ()
        else:
            argv = ["stream", "--audio", str(DEFAULT_AUDIO), "--realtime", "--record", "out/x.mp4"]
            outputs = ("out/x.mp4",)
        run = cli.run(argv, ex.root, signal_when={"signum": int(signum), "when_glob": "out/.*tmp*"})
        assert run.signalled_at_s is not None, f"the run ended before writing:\n{run.describe()}"
        check(run, ex.root, outputs, interrupted=True)


# --------------------------------------------------------------------------- the HTTP surface
#
# serve and the stream's control endpoint (issue 24), in this process on loopback, with short
# read timeouts so that a request whose declared length exceeds its body ends quickly. Each
# example is one raw request on a fresh connection. Properties: an answer (a status line) or a
# closed connection within the bound; never a 5xx; no ERROR log record or traceback; the server
# still answers afterwards; nothing changed (no command queued with a bad request, no session,
# no drain).

HTTP_TIMEOUT_S = 8.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def http_servers():
    """(control endpoint port, serve port, its Server, the log records both produce)."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("aiortc")
    from trtalk.runtime.controls import ControlServer, Controls
    from trtalk.runtime.family import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server, ServerLimits
    from trtalk.serve.cli import run_in_thread

    records = _Records()
    logging.getLogger().addHandler(records)
    controls = Controls({"happy": __import__("torch").ones(30)})
    control = ControlServer(controls, port=0, read_timeout_s=1.5).start()
    srv = Server(WarpFamily(25.0), PipelineConfig(fps=25.0),
                 limits=ServerLimits(max_upload_bytes=64_000, header_timeout_s=1.5, body_timeout_s=1.5),
                 capacity_fps_override=60)
    srv.builtin = {}
    srv.prepare()
    url, stop = run_in_thread(srv)
    try:
        yield control, int(url.rsplit(":", 1)[1]), srv, records
    finally:
        stop()
        srv.scheduler.close()
        control.close()
        logging.getLogger().removeHandler(records)


HOSTS = ["127.0.0.1", "localhost", "127.0.0.1:{port}", "localhost:{port}", "[::1]", "evil.example",
         "evil.example:{port}", "localhost:abc", "localhost:99999", "", " ", "a b", "[::1", "127.0.0.1:",
         "xn--80ak6aa92e.com", "localhost\tx"]
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "application/json; charset=foo",
                 "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "image/png", "application/json;;;", "APPLICATION/JSON"]
ORIGINS = [None, "null", "http://evil.example", "http://127.0.0.1:{port}", "http://localhost:{port}", "::", "http://[x"]
PATHS = ["/", "/control", "/control/", "/state", "/api/offer", "/api/avatar", "/api/config", "/metrics",
         "/healthz", "/static/app.js", "/static/../../etc/passwd", "/api/offer?token=secret-value", "//",
         "/%00", "/" + "a" * 3000, "*"]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW", "get"]


def _json_text(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["command", "offer", "deep", "random", "bytes"]))
    if kind == "deep":
        n = draw(st.integers(10, 120_000))
        return (b"[" * n + b"]" * draw(st.integers(0, n))) if draw(st.booleans()) else b'{"a":' * n + b"1"
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                          max_size=4), max_leaves=12)
    if kind == "command":
        keys = st.sampled_from(["set", "preset", "strength", "offset", "factor", "source", "x"])
        names = st.sampled_from(["emotion", "gaze", "blink", "freeze", "unfreeze", "pose_source", "off", "happy",
                                 "pose", "eyes", "webcam", "/etc/passwd", "avatar"])
        obj = draw(st.dictionaries(keys, st.one_of(names, values), max_size=4))
    elif kind == "offer":
        keys = st.sampled_from(["sdp", "type", "avatar", "pose", "mouth", "paste_back", "x"])
        obj = draw(st.dictionaries(keys, st.one_of(st.sampled_from(["offer", "v=0", "astronaut", "webcam", "blend",
                                                                     "still", "false"]), values), max_size=6))
    else:
        obj = draw(values)
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def http_request(draw: st.DrawFn, port: int) -> tuple[bytes, str, str]:
    """(the raw request, its method, its path)."""
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                                  min_size=1, max_size=40).map(lambda t: "/" + t))
    body = _json_text(draw) if draw(st.booleans()) else b""
    headers: list[tuple[str, str]] = []
    host = draw(st.sampled_from(HOSTS + [None]))
    if host is not None:
        headers.append(("Host", host.format(port=port)))
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    origin = draw(st.sampled_from(ORIGINS))
    if origin is not None:
        headers.append(("Origin", origin.format(port=port)))
    length = draw(st.sampled_from(["exact", "none", "-1", "abc", "1e3", "99999999999", "shorter", "longer", " 5",
                                   "5, 5", "chunked"]))
    if length == "exact":
        headers.append(("Content-Length", str(len(body))))
    elif length == "shorter":
        headers.append(("Content-Length", str(max(0, len(body) - 3))))
    elif length == "longer":
        headers.append(("Content-Length", str(len(body) + 10)))
    elif length == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    elif length != "none":
        headers.append(("Content-Length", length))
    if draw(st.booleans()):
        headers.append(("Authorization", draw(st.sampled_from(["Bearer x", "Bearer " + "y" * 5000, "Basic ::",
                                                               "Bearer"]))))
    if draw(st.integers(0, 9)) == 0:
        headers.append((draw(st.text(alphabet="abcXYZ-_:", min_size=1, max_size=20)), "v" * draw(st.integers(0, 9000))))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1", "FOO"]))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + body, method, path


def _send(port: int, data: bytes) -> tuple[bytes, float]:
    import socket
    import time

    t = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return out, time.monotonic() - t


def _check_http(answer: bytes, seconds: float, records: list[logging.LogRecord]) -> None:
    assert seconds < HTTP_TIMEOUT_S, "the server held the connection"
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/\d\.\d \d{3}", status_line), status_line[:100]
        status = int(status_line.split(b" ", 2)[1])
        assert status < 500 or status == 505, answer[:500]  # 505: an HTTP/2 request line
    loud = [r for r in records if r.levelno >= logging.ERROR or (r.exc_info and r.levelno >= logging.WARNING)]
    assert not loud, [r.getMessage()[:300] for r in loud]


@fuzz(ci_examples=40)
@given(data=st.data())
def test_control_endpoint_http(http_servers, data: st.DataObject) -> None:
    control, _, _, records = http_servers
    records.records.clear()
    raw, method, path = data.draw(http_request(control.port))
    answer, seconds = _send(control.port, raw)
    _check_http(answer, seconds, records.records)
    if not answer.startswith(b"HTTP/1.0 200") and not answer.startswith(b"HTTP/1.1 200"):
        assert control.controls.begin_frame(0) == []  # a refused request queued nothing
    control.controls.begin_frame(0)
    ok, _ = _send(control.port, b"GET /state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200")


@fuzz(ci_examples=40)
@given(data=st.data())
def test_serve_http(http_servers, data: st.DataObject) -> None:
    _, port, srv, records = http_servers
    records.records.clear()
    raw, method, path = data.draw(http_request(port))
    answer, seconds = _send(port, raw)
    _check_http(answer, seconds, records.records)
    assert not srv.sessions and not srv.draining
    ok, _ = _send(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
