"""Shared test fixtures for the whole trtalk test suite.

Everything here is synthetic and deterministic (fixed seeds, fixed encoder
settings), generated with numpy, OpenCV and PyAV into pytest temp dirs once
per session.  PyAV is imported only inside the helpers that write media, so
collecting the suite does not need it.

Fixtures:

* ``face_image_path``   - the bundled astronaut photo (skips if absent).
* ``speech_wave``       - 3.0 s of speech-like float32 audio, 16 kHz mono.
* ``speech_wav_path``   - ``speech_wave`` as a 16-bit PCM wav.
* ``speech_mp3_path``   - ``speech_wave`` as mp3 (libmp3lame, 16 kHz mono).
* ``pose_video_path``   - 2.0 s, 25 fps, 256x256 H.264 mp4 of the photo with
  a slow head-like motion, no audio.
* ``talking_video_path``- the same video with the first 2.0 s of
  ``speech_wave`` muxed as AAC.

Media writers for tests (the one copy of each; tests import them from here):

* :func:`write_wav` - 16-bit PCM wav.
* :func:`write_audio_file` - any PyAV audio encoder (mp3, aac, pcm), mono or multi-channel.
* :func:`write_video` - a raw PyAV video writer (codec, crf, display rotation, audio track), for
  inputs the product's own :class:`~trtalk.media.mp4.Mp4Sink` cannot make.
* :func:`mp3_encoder` - the name of this PyAV build's mp3 encoder, or None.

Head motion through the pipeline: :class:`AnglesOnlyFamily` (a family stand-in whose pose codes
are the angles it is given) and :func:`motion_trace` (the angles and eye closure of every frame).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import wave
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

# pytest-xdist (the README's test command runs `-n 2`, one worker per core of CI's 2 CPUs): each
# worker, and every trtalk process a test starts (they inherit the environment), computes with one
# thread, so the two workers never fight over a core (an OpenMP pool of 2 beside a busy core waits
# at every barrier). Set before numpy and torch load: OpenMP and OpenBLAS read it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import cv2
import numpy as np
import pytest

import trtalk
from trtalk.errors import TrtalkError

# Triton kernels run in Triton's interpreter on machines without a GPU. Triton reads the switch
# when it is first imported (torch.compile imports it), so it is set here, before any test module.
if "triton" not in sys.modules:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

SPEECH_SR = 16_000
SPEECH_SECONDS = 3.0
VIDEO_FPS = 25
VIDEO_SECONDS = 2.0
VIDEO_SIZE = 256

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ lanes


#: The test files that take longest (CI's durations on 2 idle cores, a file's setup and calls
#: together), longest first. Under pytest-xdist (`-n 2 --dist loadfile`: each file runs whole on one
#: worker, its module fixtures built once) the files are handed out in this order, then the rest in
#: collection order, so the long files start first and the short ones fill in behind them and both
#: workers finish at about the same time. A stale list costs only speed, never a result.
LONGEST_FILES = ("test_aot.py", "test_serve.py", "test_pdfgc_engines.py", "test_export.py", "test_bench.py",
                 "test_fuzz.py", "test_harden.py", "test_mic_real.py", "test_pdfgc_export.py",
                 "test_engine.py",  # after test_export.py: it reuses that file's export (shared_cache)
                 "test_serve_browser.py", "test_pipeline.py", "test_family_plugin.py", "test_models.py",
                 "test_kernels.py", "test_audio.py")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's loadfile hands out the files with the most tests first, which is not the
    # longest first; keep the order of `pytest_collection_modifyitems` below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _longest_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: whole files, those of :data:`LONGEST_FILES` first (in its
    order); a file's tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the longest files first (:data:`LONGEST_FILES`). Tests marked ``gpu``
    skip, with the reason, where torch sees no CUDA device (the one place that decides it: no
    per-module ``skipif`` copies)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _longest_first(items)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch sees none here "
                                   "(scripts/gpu_check.sh runs these on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


# ------------------------------------------------------------------ images


def _astronaut_path() -> Path:
    return Path(trtalk.__file__).parent / "assets" / "astronaut.png"


@pytest.fixture(scope="session")
def face_image_path() -> Path:
    """Path to ``trtalk/assets/astronaut.png`` (a frontal face photo).

    Skips the test when the asset is not in the tree.
    """
    path = _astronaut_path()
    if not path.is_file():
        pytest.skip(f"test asset {path} is missing")
    return path


# ------------------------------------------------------------------ audio


def make_speech_wave(seconds: float = SPEECH_SECONDS, sr: int = SPEECH_SR,
                     seed: int = 1234) -> np.ndarray:
    """Deterministic speech-like signal, float32 mono in [-1, 1].

    Voiced stretches of 0.5-0.9 s (a harmonic series on f0 100-220 Hz that
    drifts slowly, with 5.5 Hz vibrato, shaped by three formant bumps, and
    an amplitude envelope of ~4 syllables per second with a short noise
    burst at each syllable onset) alternate with silent gaps of 0.2-0.4 s.
    The signal starts with 0.15 s of silence and is peak-normalised to 0.5.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    out = np.zeros(n, np.float64)
    cursor = int(0.15 * sr)
    while cursor < n:
        seg_len = int(rng.uniform(0.5, 0.9) * sr)
        seg_len = min(seg_len, n - cursor)
        if seg_len < int(0.1 * sr):
            break
        t = np.arange(seg_len) / sr
        f0_base = rng.uniform(100.0, 220.0)
        drift = 1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))
        vibrato = 1.0 + 0.02 * np.sin(2 * np.pi * 5.5 * t)
        f0 = f0_base * drift * vibrato
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formants = (rng.uniform(500, 800), rng.uniform(1100, 1800), rng.uniform(2300, 3000))
        voiced = np.zeros(seg_len)
        for k in range(1, 30):
            fk = f0_base * k
            if fk > 0.45 * sr:
                break
            gain = sum(np.exp(-0.5 * ((fk - fm) / 150.0) ** 2) for fm in formants)
            voiced += (0.15 + gain) / k * np.sin(k * phase)
        # syllable envelope: ~4 raised-cosine bumps per second
        syll = max(1, int(round(seg_len / sr * 4.0)))
        bounds = np.linspace(0, seg_len, syll + 1).astype(int)
        env = np.zeros(seg_len)
        noise = np.zeros(seg_len)
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = b - a
            env[a:b] = np.sin(np.pi * np.arange(m) / m) ** 1.5 * rng.uniform(0.6, 1.0)
            burst = min(m, int(0.03 * sr))
            noise[a:a + burst] = rng.standard_normal(burst) * np.linspace(0.3, 0.0, burst)
        out[cursor:cursor + seg_len] = voiced * env + noise
        cursor += seg_len + int(rng.uniform(0.2, 0.4) * sr)
    out *= 0.5 / np.max(np.abs(out))
    return out.astype(np.float32)


@pytest.fixture(scope="session")
def speech_wave() -> np.ndarray:
    """3.0 s of synthetic speech, float32 mono at 16 kHz, shape ``(48000,)``.

    Deterministic (seeded); see :func:`make_speech_wave`.  Do not modify it
    in place: the array is shared by the whole session.
    """
    wave_ = make_speech_wave()
    wave_.setflags(write=False)
    return wave_


#: The shipped demo speech (espeak-ng TTS, 4.64 s, 16 kHz mono 16-bit): real speech, the kind of
#: audio a voice agent sends.
DEMO_SPEECH_PATH = Path(trtalk.__file__).resolve().parent / "assets" / "demo_speech.wav"


@pytest.fixture(scope="session")
def demo_speech() -> np.ndarray:
    """The shipped demo speech as float32 mono at 16 kHz, shape ``(74269,)`` (4.64 s).

    For checks that the mouth follows *speech*: the mouth model was trained on real speech, and
    :func:`speech_wave` is a harmonic stand-in with no articulation. Read-only, shared.
    """
    with wave.open(str(DEMO_SPEECH_PATH), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == SPEECH_SR
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    wave_ = (pcm.astype(np.float32) / 32768.0)
    wave_.setflags(write=False)
    return wave_


# ------------------------------------------------------------------ media writers


def write_wav(path: Path, samples: np.ndarray, sr: int = SPEECH_SR) -> Path:
    """Write float samples in [-1, 1] (clipped) as a 16-bit PCM mono wav; returns ``path``."""
    pcm = np.round(np.clip(np.asarray(samples, np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def _encode_audio(container, stream, samples: np.ndarray, sr: int) -> None:
    """Encode float ``samples`` (n,) mono or (channels, n) into ``stream`` and flush it."""
    import av

    planar = np.ascontiguousarray(np.atleast_2d(samples), np.float32)
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
    frame.sample_rate = sr
    frame.pts = 0
    frame.time_base = Fraction(1, sr)
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_audio_file(path: Path, samples: np.ndarray, codec: str, sr: int = SPEECH_SR) -> Path:
    """Encode float ``samples`` ((n,) mono or (2, n) stereo) with the PyAV encoder ``codec``
    (``libmp3lame``, ``aac``, ``pcm_s16le``...) at ``sr`` Hz, 64 kb/s where it applies."""
    import av

    channels = np.atleast_2d(samples).shape[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sr, layout="mono" if channels == 1 else "stereo")
        stream.codec_context.bit_rate = 64_000
        _encode_audio(container, stream, samples, sr)
    return path


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = VIDEO_FPS, *,
                crf: int | None = None, preset: str | None = None, rotation: float | None = None,
                audio: np.ndarray | None = None, audio_rate: int = SPEECH_SR) -> Path:
    """Write RGB uint8 ``frames`` as an H.264 (libx264, else mpeg4) yuv420p video.

    ``crf``/``preset`` go to libx264; ``rotation`` sets the display matrix (degrees, as phones
    record portrait video); ``audio`` ((n,) or (2, n) float) adds an AAC track at ``audio_rate``.
    """
    import av

    h, w = frames[0].shape[:2]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {k: str(v) for k, v in (("crf", crf), ("preset", preset)) if v is not None}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            channels = np.atleast_2d(audio).shape[0]
            astream = container.add_stream("aac", rate=audio_rate,
                                           layout="mono" if channels == 1 else "stereo")
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, audio, audio_rate)
    return path


def mp3_encoder() -> str | None:
    """This PyAV build's mp3 encoder (``libmp3lame`` in the PyPI wheel), or None."""
    import av

    for name in ("libmp3lame", "mp3"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - not built into this FFmpeg
            continue
        return name
    return None


# ------------------------------------------------------------------ audio files


@pytest.fixture(scope="session")
def speech_wav_path(speech_wave: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``speech_wave`` as a 16-bit PCM mono 16 kHz ``speech.wav``."""
    return write_wav(tmp_path_factory.mktemp("speech") / "speech.wav", speech_wave)


@pytest.fixture(scope="session")
def speech_mp3_path(speech_wave: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``speech_wave`` as ``speech.mp3`` (libmp3lame, 16 kHz mono, 64 kb/s).

    The PyPI ``av`` wheel ships libmp3lame.  Should a build lack every mp3
    encoder, the fixture falls back to AAC in ``speech.m4a`` (and logs it),
    so tests still get a compressed audio file.  MP3 adds encoder delay:
    decoded length is a little above 3.0 s.
    """
    out_dir = tmp_path_factory.mktemp("speech_mp3")
    codec = mp3_encoder()
    if codec is not None:
        return write_audio_file(out_dir / "speech.mp3", speech_wave, codec)
    log.warning("no mp3 encoder in this PyAV build; speech_mp3_path is an m4a (AAC)")
    return write_audio_file(out_dir / "speech.m4a", speech_wave, "aac")


# ------------------------------------------------------------------ video


def head_motion_frames(photo_rgb: np.ndarray, n_frames: int, fps: float = VIDEO_FPS,
                       size: int = VIDEO_SIZE) -> list[np.ndarray]:
    """Frames of ``photo_rgb`` with a slow head-like wobble, ``size`` square.

    For frame time t the photo is rotated by ``8 * sin(2 pi t / 2)`` degrees
    about the face centre and shifted by up to (4, 3) px, then the square
    around the face is cropped and resized to ``size`` -- all as one
    ``cv2.warpAffine``.  The face centre and crop are fixed fractions of the
    photo (tuned for the 512x512 astronaut: face at ~(0.44, 0.23) of the
    width/height, crop side 0.44 of the shorter side).
    """
    h, w = photo_rgb.shape[:2]
    cx, cy = 0.44 * w, 0.23 * h
    crop = 0.44 * min(h, w)
    scale = size / crop
    frames = []
    for i in range(n_frames):
        t = i / fps
        angle = 8.0 * np.sin(2 * np.pi * t / 2.0)
        tx = 4.0 * np.sin(2 * np.pi * t / 1.3)
        ty = 3.0 * np.sin(2 * np.pi * t / 1.7 + 0.5)
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        # move the (rotated, scaled) face centre to the output centre, plus jitter
        m[0, 2] += size / 2 - cx + tx * scale
        m[1, 2] += size / 2 - cy + ty * scale
        frames.append(
            cv2.warpAffine(photo_rgb, m, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
        )
    return frames


def _photo_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def pose_video_path(face_image_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.0 s, 25 fps (50 frames), 256x256 H.264 ``pose.mp4``, no audio track.

    The astronaut photo with a slow head-like motion (see
    :func:`head_motion_frames`), written with :class:`Mp4Sink`.
    """
    from trtalk.media.mp4 import Mp4Sink

    frames = head_motion_frames(_photo_rgb(face_image_path), int(VIDEO_SECONDS * VIDEO_FPS))
    path = tmp_path_factory.mktemp("pose") / "pose.mp4"
    with Mp4Sink(path, fps=VIDEO_FPS) as sink:
        for f in frames:
            sink.write(f)
    return path


@pytest.fixture(scope="session")
def talking_video_path(face_image_path: Path, speech_wave: np.ndarray,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``pose_video_path`` (2.0 s, 25 fps, 256x256 H.264) plus an AAC
    audio track holding the first 2.0 s of ``speech_wave`` (16 kHz mono).
    """
    from trtalk.media.mp4 import Mp4Sink

    frames = head_motion_frames(_photo_rgb(face_image_path), int(VIDEO_SECONDS * VIDEO_FPS))
    audio = np.asarray(speech_wave[: int(VIDEO_SECONDS * SPEECH_SR)])
    path = tmp_path_factory.mktemp("talking") / "talking.mp4"
    with Mp4Sink(path, fps=VIDEO_FPS, audio=audio, sample_rate=SPEECH_SR) as sink:
        for f in frames:
            sink.write(f)
    return path


def empty_dir(path: Path) -> Path:
    """``path`` made as an empty folder (parents too): an input with nothing in it."""
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------ shared export cache


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trtalk cache (``cache_dir``) for the whole run, the pytest-xdist workers' too: a graph
    set exported into it by one test file (the same seed, config, precision and batch: one cache
    key) is reused by the others. Fill it inside :func:`shared_cache_lock`."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    return root / "trtalk-shared-cache"


def shared_cache_lock(cache: Path):
    """A lock around filling ``cache``: the second worker to want an export waits for the first
    one's instead of exporting it again (the cache would stay correct, but twice the work)."""
    from filelock import FileLock  # torch's own dependency

    cache.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache) + ".lock")


# ------------------------------------------------------------------ PD-FGC checkpoints


@pytest.fixture(scope="session")
def pdfgc_model():
    """PD-FGC with seeded random weights, the small config: the narrow test generator (its
    2590-wide style layers keep the official sizes) and the small encoders."""
    from trtalk.families.pdfgc import model as P

    return P.PDFGC.random(seed=3, config=P.PDFGCConfig.small())


@pytest.fixture(scope="session")
def pdfgc_folder(pdfgc_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pdfgc_model`` as the official checkpoint folder, written once per session: every official
    key with its official shape, the keys inference never reads (the official skips, the
    generator's ``style.*``) as one value broadcast to their shape (`official_state_dicts`
    ``compact``: about 200 MB instead of 450 MB)."""
    from trtalk.families.pdfgc import model as P

    return P.save_pdfgc_folder(pdfgc_model, tmp_path_factory.mktemp("pdfgc") / "ck", compact=True)


# ------------------------------------------------------------------ bad files


def assert_rejects_file(fn: Callable[[Path], object], path: Path, data: bytes | None = None,
                        match: str | None = None) -> None:
    """``fn(path)`` raises a one-line TrtalkError matching ``match`` (default: the file's name);
    ``data`` (when given) is written to ``path`` first."""
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(TrtalkError, match=re.escape(path.name) if match is None else match) as exc:
        fn(path)
    assert "\n" not in str(exc.value), str(exc.value)


# ------------------------------------------------------------------ generator implementations


def images_of_two_impls(g, style, id_map, want_impl: str, got_impl: str, dtype=None):
    """``(want, got)``: the generator ``g``'s image with modconv implementation ``want_impl``,
    then with ``got_impl`` (no grad; ``g`` is left on ``got_impl``). With ``dtype`` the second run
    casts ``g`` and its inputs to it and returns float32."""
    import torch

    with torch.no_grad():
        g.set_modconv_impl(want_impl)
        want = g(style, id_map)
        if dtype is not None:
            g.to(dtype)
            style, id_map = style.to(dtype), id_map.to(dtype)
        g.set_modconv_impl(got_impl)
        got = g(style, id_map)
    return want, got.float() if dtype is not None else got


def build_rtx_engines(export_dir: Path) -> tuple[Path, dict]:
    """TensorRT-RTX FP16 engines of every graph of ``export_dir`` (ahead of time for sm89, max
    batch 4: builds on a CPU), recorded in its manifest; skips without TensorRT-RTX."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed (extra trt-rtx)")
    from trtalk.export.manifest import Manifest
    from trtalk.export.tensorrt import BuildOptions, build_export_engines

    m = Manifest.read(export_dir)
    engines = build_export_engines(export_dir, m, BuildOptions(flavour="tensorrt-rtx", max_batch=4,
                                                               compute_capability="sm89"))
    m.engines = engines
    m.write(export_dir)
    return export_dir, engines


def check_rtx_engine(export_dir: Path, stage: str, engine: dict) -> dict:
    """Assert that ``stage``'s engine of `build_rtx_engines` is intact, keyed to its graph and
    has the graph's I/O; returns its sidecar."""
    from trtalk.export.engine_file import check_engine
    from trtalk.export.manifest import Manifest
    from trtalk.export.stages import StageSpec
    from trtalk.export.tensorrt import expected_io

    rec = Manifest.read(export_dir).graphs[stage]
    ok, reason, sc = check_engine(export_dir / engine["file"])
    assert ok, reason
    key = sc["key"]
    assert key["flavour"] == "tensorrt-rtx" and key["compute_capability"] == "sm89"
    assert key["precision"] == "fp16" and key["graph_sha256"] == rec.sha256
    assert sc["io"] == expected_io(StageSpec(stage, tuple(rec.inputs), tuple(rec.outputs)))
    return sc


def family_frames(families: Sequence, seed: int = 3) -> list[np.ndarray]:
    """Three frames (int) of each model family from one random 224 crop as avatar and pose and
    random mel windows: for comparing backends of one family."""
    import torch

    crop = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    mel = torch.rand(3, 1, 80, 20, generator=torch.Generator().manual_seed(seed))
    out = []
    for f in families:
        av = f.make_avatar(crop, "x", crop=crop, crop_m=np.eye(2, 3))
        out.append(f.synthesize(f.new_state(), av, mel, [0, 1, 2], av.ref_pose.expand(3, -1)).astype(int))
    return out


# ------------------------------------------------------------------ head motion through the pipeline


class AnglesOnlyFamily:
    """A family stand-in for the motion tests: its pose code is the generated angles and eye
    closure themselves, and it draws no pixels (black 8x8 frames)."""

    name = "stub"
    output_size = 8
    random_weights = False

    @property
    def capabilities(self):
        from trtalk.families.spec import Capabilities

        return Capabilities()

    def new_state(self):
        from trtalk.families.base import FamilyState

        return FamilyState()

    def configure_motion(self, state, motion=None, blink=None, avatar=None) -> None:
        pass

    def motion_codes(self, avatar, angles, eye_closure=None):
        import torch

        return torch.cat([angles, eye_closure[:, None]], dim=1)

    def synthesize(self, state, avatar, mel, frames, pose, camera=None) -> np.ndarray:
        return np.zeros((len(frames), 8, 8, 3), np.uint8)


def motion_trace(wave: np.ndarray, block: int | None = None, style=None) -> list[tuple]:
    """(frame, yaw, pitch, roll, eye closure) of every frame of a virtual-clock pipeline run with
    generated head motion on `AnglesOnlyFamily`: ``wave`` (16 kHz) fed in ``block``-sample chunks
    (None: the source's default), with the head motion ``style`` (None: the generic one)."""
    import torch

    from trtalk.families.base import Avatar
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.clock import VirtualClock
    from trtalk.runtime.pipeline import Pipeline, PipelineConfig
    from trtalk.runtime.sources import AudioFileSource

    avatar = Avatar(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), torch.zeros(3))
    source = AudioFileSource(wave=wave) if block is None else AudioFileSource(wave=wave, block=block)
    pipe = Pipeline(PipelineConfig(audio_gain=3.0, batch=4), AnglesOnlyFamily(), avatar,  # type: ignore[arg-type]
                    source, None, [NullSink()], VirtualClock(), motion=True, motion_style=style)
    pipe.pose.motion.keep_trace = True
    pipe.run()
    return list(pipe.pose.motion.trace)
