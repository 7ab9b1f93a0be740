"""Tests for trtalk.fsutil and trtalk.media (reading, frame helpers, sinks, the mp4 writer)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import empty_dir

from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output, check_writable
from trtalk.media.frames import composite_side_by_side
from trtalk.media.mp4 import Mp4Sink, available_video_encoder
from trtalk.media.read import (MAX_FRAME_PIXELS, MediaInfo, image_header_size, iter_frames, natural_sort_key,
                               probe, read_image)
from trtalk.media.sinks import FrameSink, NullSink

AAC_FRAME = 1024  # samples per AAC frame: the tolerance for audio vs video duration


def gradient(w: int, h: int, shift: int = 0) -> np.ndarray:
    """A smooth RGB gradient, easy to compress near-losslessly."""
    x = np.linspace(0, 255, w)[None, :]
    y = np.linspace(0, 255, h)[:, None]
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y, (h, w))
    b = np.broadcast_to((x + y) / 2, (h, w))
    img = np.stack([r, g, b], axis=2) + shift
    return np.clip(img, 0, 255).astype(np.uint8)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------ fsutil


def test_atomic_output_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.") and tmp.name.endswith(".tmp.mp4")
        assert not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert leftovers(tmp_path) == []

    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"data"  # untouched
    assert leftovers(tmp_path) == []


def test_check_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_writable(tmp_path / "fine.mp4")
    # a name that fits but whose temp file would not: refused up front, not after the work
    with pytest.raises(TrtalkError, match="the file name is 245 bytes; at most"):
        check_writable(tmp_path / ("n" * 241 + ".mp4"))
    with pytest.raises(TrtalkError, match="it is a directory"):  # "-o ." names no file
        check_writable(Path("."))
    with pytest.raises(TrtalkError, match="does not exist"):
        check_writable(tmp_path / "nope" / "out.mp4")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(TrtalkError, match="not a directory"):
        check_writable(afile / "out.mp4")
    with pytest.raises(TrtalkError, match="is a directory"):
        check_writable(tmp_path)
    # permission: chmod is meaningless as root, so fake os.access
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real_access(p, m))
    with pytest.raises(TrtalkError, match=r"cannot write .*out\.mp4: no permission"):
        check_writable(tmp_path / "out.mp4")
    with pytest.raises(TrtalkError):
        Mp4Sink(tmp_path / "out.mp4")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_check_writable_readonly_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(TrtalkError, match="no permission"):
            check_writable(ro / "out.mp4")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ Mp4Sink


def test_mp4sink_video_and_audio(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    w, h, n, fps, sr = 100, 70, 50, 25.0, 16000
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(2.3 * sr))).astype(np.float32)  # longer than 2.0 s
    img = gradient(w, h)
    with Mp4Sink(target, fps=fps, audio=audio, sample_rate=sr) as sink:
        assert isinstance(sink, FrameSink)
        for _ in range(n):
            sink.write(img)
            assert not target.exists()
        assert sink.frames_written == n
    assert target.is_file()
    assert leftovers(tmp_path) == []

    expected_codec = av.codec.Codec(available_video_encoder(), "w").name
    with av.open(str(target)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        assert vs.codec_context.name == ("h264" if expected_codec in ("libx264", "libopenh264") else expected_codec)
        assert (vs.codec_context.width, vs.codec_context.height) == (w, h)
        assert aus.codec_context.name == "aac"
        assert aus.codec_context.channels == 1
        a_rate = aus.codec_context.sample_rate
        v_dur = float(vs.duration * vs.time_base)
        a_dur = float(aus.duration * aus.time_base)
        assert v_dur == pytest.approx(n / fps, abs=1e-6)
        # audio trimmed to the video: within one AAC frame at the encoder rate
        assert abs(a_dur - v_dur) <= AAC_FRAME / a_rate
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == n
    err = np.abs(frames[n // 2].astype(np.int16) - img.astype(np.int16)).mean()
    assert err < 8, err

    with av.open(str(target)) as c:
        decoded = sum(f.samples for f in c.decode(audio=0))
    assert abs(decoded - n / fps * a_rate) <= AAC_FRAME


def test_mp4sink_short_audio_padded_and_odd_size(tmp_path: Path) -> None:
    target = tmp_path / "odd.mp4"
    audio = np.full(8000, 0.2, np.float32)  # 0.5 s of audio for 1.2 s of video
    with Mp4Sink(target, fps=25, audio=audio) as sink:
        for i in range(30):
            sink.write(gradient(101, 71, shift=i))
    info = probe(target)
    assert info.kind == "video" and info.has_audio
    assert (info.width, info.height) == (102, 72)  # padded to even
    assert info.num_frames == 30
    with av.open(str(target)) as c:
        aus = c.streams.audio[0]
        a_dur = float(aus.duration * aus.time_base)
        assert abs(a_dur - 1.2) <= AAC_FRAME / aus.codec_context.sample_rate
        tail = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    sr = 16000
    assert np.abs(tail[int(0.8 * sr):int(1.1 * sr)]).max() < 0.02  # silence padding


def test_mp4sink_pts_and_no_audio(tmp_path: Path) -> None:
    target = tmp_path / "pts.mp4"
    with Mp4Sink(target, fps=10, size=(64, 48)) as sink:
        sink.write(gradient(64, 48), pts_s=0.0)
        sink.write(gradient(64, 48), pts_s=0.3)
        with pytest.raises(ValueError):
            sink.write(gradient(64, 48), pts_s=0.3)
        with pytest.raises(ValueError):
            sink.write(gradient(32, 48))
        with pytest.raises(ValueError):
            sink.write(np.zeros((48, 64, 3), np.float32))
    assert sink.frames_written == 2
    with av.open(str(target)) as c:
        assert len(c.streams.audio) == 0
        pts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert pts == pytest.approx([0.0, 0.3])


def test_mp4sink_exception_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Sink(target, fps=25, audio=np.zeros(16000, np.float32)) as sink:
            for _ in range(5):
                sink.write(gradient(64, 64))
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []

    # an existing file survives a failed overwrite
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with Mp4Sink(target) as sink:
            sink.write(gradient(64, 64))
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_mp4sink_no_frames_saves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "empty.mp4"
    with pytest.raises(TrtalkError, match="no frames"):
        with Mp4Sink(target):
            pass
    assert list(tmp_path.iterdir()) == []


def _decoded_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


def test_mp4sink_pushed_audio_equals_whole_audio(tmp_path: Path) -> None:
    """The two ways of giving the audio make the same audio track: pushed in odd pieces, ahead
    of and behind the frames, it encodes as the whole wave given up front."""
    sr, n, fps = 16000, 30, 25.0
    t = np.arange(int(1.5 * sr)) / sr  # 1.5 s of audio for 1.2 s of video: trimmed
    audio = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    whole, pushed = tmp_path / "whole.mp4", tmp_path / "pushed.mp4"
    with Mp4Sink(whole, fps=fps, audio=audio) as sink:
        assert not sink.accepts_audio
        with pytest.raises(TypeError, match="push_audio"):
            sink.write_audio(audio[:100])
        for i in range(n):
            sink.write(gradient(64, 48, shift=i))
    pieces = np.array_split(audio, 37)  # ~649 samples each, frames need 640
    with Mp4Sink(pushed, fps=fps, push_audio=True) as sink:
        assert sink.accepts_audio
        sink.write_audio(pieces[0])
        for i in range(n):
            sink.write(gradient(64, 48, shift=i))
            sink.write_audio(pieces[i + 1])
            # encoded audio never runs past what was pushed, nor past the frame's end
            assert sink.audio_samples_written == min(sum(len(p) for p in pieces[: i + 2]),
                                                     round((i + 1) / fps * sr))
        for p in pieces[n + 1:]:
            sink.write_audio(p)
    a, b = _decoded_audio(whole), _decoded_audio(pushed)
    assert a.shape == b.shape and abs(len(a) - n / fps * sr) <= AAC_FRAME
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert np.abs(a).max() > 0.2  # the tone is there, not silence
    with pytest.raises(ValueError, match="not both"):
        Mp4Sink(tmp_path / "x.mp4", audio=audio, push_audio=True)


def test_mp4sink_live_keeps_the_recording_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C ends a live session: a live sink finalises the file (an offline one discards it,
    see test_mp4sink_exception_leaves_nothing); other errors still discard it."""
    target = tmp_path / "live.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Sink(target, fps=25, push_audio=True, live=True) as sink:
            sink.write_audio(np.full(8000, 0.1, np.float32))
            for i in range(10):
                sink.write(gradient(64, 64, shift=i), pts_s=i / 25)
            raise KeyboardInterrupt
    info = probe(target)
    assert info.num_frames == 10 and info.has_audio
    assert leftovers(tmp_path) == []
    # audio trimmed to the 0.4 s of video
    assert abs(len(_decoded_audio(target)) - 0.4 * 16000) <= AAC_FRAME

    broken = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Sink(broken, fps=25, push_audio=True, live=True) as sink:
            sink.write(gradient(64, 64))
            raise RuntimeError("encoder died")
    assert not broken.exists() and leftovers(tmp_path) == []


def test_frame_sink_audio_contract() -> None:
    """The base contract: no audio, no stop request, unless a sink says otherwise."""
    sink = NullSink()
    assert not sink.accepts_audio and not sink.stop_requested
    with pytest.raises(TypeError, match="takes no audio"):
        sink.write_audio(np.zeros(10, np.float32))
    with pytest.raises(TypeError):
        FrameSink()  # abstract: write, close and frames_written must be given


def test_null_sink() -> None:
    with NullSink("ignored.mp4", fps=25) as sink:
        assert isinstance(sink, FrameSink)
        for _ in range(7):
            sink.write(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(ValueError):
            sink.write(np.zeros((8, 8), np.uint8))
    assert sink.frames_written == 7
    assert not Path("ignored.mp4").exists()


# ------------------------------------------------------------------ media


def write_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_probe_and_iter_image(tmp_path: Path) -> None:
    img = gradient(40, 30)
    path = tmp_path / "a.png"
    write_png(path, img)
    info = probe(path)
    assert info == MediaInfo(path, "image", True, False, None, 1, None, 40, 30)
    frames = list(iter_frames(path))
    assert len(frames) == 1
    assert frames[0].dtype == np.uint8 and frames[0].shape == (30, 40, 3)
    np.testing.assert_array_equal(frames[0], img)  # RGB order preserved


def test_probe_and_iter_folder_natural_sort(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        write_png(folder / f"f{i}.png", np.full((12, 16, 3), i, np.uint8))
    (folder / "notes.txt").write_text("ignore me")
    info = probe(folder)
    assert (info.kind, info.num_frames, info.width, info.height) == ("folder", 3, 16, 12)
    assert [int(f[0, 0, 0]) for f in iter_frames(folder)] == [1, 2, 10]
    assert sorted(["f10", "f2", "F1"], key=natural_sort_key) == ["F1", "f2", "f10"]


def test_probe_and_iter_video(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with Mp4Sink(path, fps=25) as sink:
        for i in range(12):
            sink.write(gradient(48, 32, shift=i * 5))
    info = probe(path)
    assert info.kind == "video" and info.has_video and not info.has_audio
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 12
    assert info.duration_s == pytest.approx(12 / 25, abs=1e-3)
    assert (info.width, info.height) == (48, 32)
    frames = list(iter_frames(path))
    assert len(frames) == 12 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert frames[-1].mean() > frames[0].mean()


def test_undecodable_metadata_is_not_an_error(tmp_path: Path) -> None:
    """A non-UTF-8 byte in a container's metadata (found by tests/test_fuzz.py) used to escape
    PyAV as a UnicodeDecodeError; the text is replaced, the media read."""
    from trtalk.audio import load_audio

    path = tmp_path / "v.mp4"
    with Mp4Sink(path, fps=25) as sink:
        for i in range(4):
            sink.write(gradient(48, 32, shift=i * 5))
    data = bytearray(path.read_bytes())
    data[data.index(b"Lavf") + 1] = 0xFF  # the encoder tag, in the file's metadata
    path.write_bytes(bytes(data))
    assert probe(path).num_frames == 4
    assert len(list(iter_frames(path))) == 4
    with pytest.raises(TrtalkError, match="no audio track"):
        load_audio(path)


def test_probe_audio_files(speech_wav_path: Path, speech_mp3_path: Path, speech_wave: np.ndarray) -> None:
    assert speech_wave.dtype == np.float32 and speech_wave.shape == (48000,)
    wav = probe(speech_wav_path)
    assert (wav.kind, wav.has_video, wav.has_audio) == ("audio", False, True)
    assert wav.duration_s == pytest.approx(3.0, abs=0.01)
    mp3 = probe(speech_mp3_path)
    assert mp3.kind == "audio" and mp3.duration_s == pytest.approx(3.0, abs=0.15)
    with pytest.raises(TrtalkError, match="no video frames"):
        iter_frames(speech_wav_path)


def test_speech_wave_is_speech_like(speech_wave: np.ndarray) -> None:
    frames = speech_wave[: 48000 // 160 * 160].reshape(-1, 160)  # 10 ms frames
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    silent = rms < 1e-4
    assert 0.15 < silent.mean() < 0.5  # gaps exist but speech dominates
    assert np.abs(speech_wave).max() == pytest.approx(0.5, abs=1e-3)


def test_video_fixtures(pose_video_path: Path, talking_video_path: Path) -> None:
    pose = probe(pose_video_path)
    assert (pose.kind, pose.has_audio, pose.num_frames, pose.width, pose.height) == (
        "video", False, 50, 256, 256)
    talk = probe(talking_video_path)
    assert talk.has_audio and talk.num_frames == 50
    assert talk.duration_s == pytest.approx(2.0, abs=0.05)
    first = next(iter_frames(pose_video_path))
    assert first.shape == (256, 256, 3)


def test_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(TrtalkError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(TrtalkError, match="missing.mp4"):
        iter_frames(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(TrtalkError, match="garbage.mp4"):
        probe(garbage)
    with pytest.raises(TrtalkError, match="garbage.mp4"):
        list(iter_frames(garbage))
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    with pytest.raises(TrtalkError, match="bad.png"):
        probe(bad_png)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(TrtalkError, match="empty.wav"):
        probe(empty)
    with pytest.raises(TrtalkError, match="no images"):
        probe(empty_dir(tmp_path / "nothing"))


@pytest.mark.parametrize("ext, params", [
    (".png", ()), (".jpg", ()), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), (".bmp", ()),
    (".webp", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossy VP8, lossless VP8L
])
def test_image_header_size_matches_the_decoder(ext: str, params: tuple[int, ...]) -> None:
    data = cv2.imencode(ext, gradient(53, 37), params)[1].tobytes()
    assert image_header_size(data) == (53, 37)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (37, 53, 3)
    assert image_header_size(b"GIF89a" + data[6:]) is None


def test_read_image_checks_the_header_before_decoding(tmp_path: Path) -> None:
    import struct
    import zlib

    def png(w: int, h: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")

    # 60000 x 60000 is over OpenCV's own limit (a cv2.error before); 10001 x 10000 is just over ours.
    for w, h in ((60000, 60000), (10001, MAX_FRAME_PIXELS // 10001 + 1)):
        path = tmp_path / f"huge{w}.png"
        path.write_bytes(png(w, h))
        with pytest.raises(TrtalkError, match=f"{w}x{h} pixels, more than the 100 megapixels"):
            read_image(path)
    small = tmp_path / "small.png"  # a header that passes, no pixel data: the decoder refuses
    small.write_bytes(png(64, 64))
    with pytest.raises(TrtalkError, match="not a valid image file"):
        read_image(small)
    tiff = tmp_path / "tiff.png"
    tiff.write_bytes(cv2.imencode(".tiff", gradient(8, 8))[1].tobytes())
    with pytest.raises(TrtalkError, match="not a PNG, JPEG, BMP or WebP file"):
        read_image(tiff)


def test_video_frame_size_is_checked_before_decoding(tmp_path: Path) -> None:
    y4m = tmp_path / "huge.y4m"  # FFmpeg accepts 16000 x 16000; its frame would be 768 MB as RGB
    y4m.write_bytes(b"YUV4MPEG2 W16000 H16000 F25:1 C420jpeg\nFRAME\n" + b"\x80" * 1000)
    with pytest.raises(TrtalkError, match="16000x16000 pixels"):
        probe(y4m)
    with pytest.raises(TrtalkError, match="16000x16000 pixels"):
        iter_frames(y4m)


def test_composite_side_by_side() -> None:
    a = np.zeros((448, 448, 3), np.uint8)
    b = np.zeros((256, 128, 3), np.uint8)
    c = np.zeros((100, 300), np.uint8)
    out = composite_side_by_side([a, b, c])
    assert out.shape == (224, 224 + 112 + 672, 3) and out.dtype == np.uint8
    assert composite_side_by_side([b], height=64).shape == (64, 32, 3)
    with pytest.raises(ValueError):
        composite_side_by_side([])


def test_mp4sink_encoder_and_audio_rate_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trtalk.media import mp4

    available_video_encoder.cache_clear()
    monkeypatch.setattr(mp4, "VIDEO_ENCODER_PREFERENCE", ("no_such_encoder", "mpeg4"))
    monkeypatch.setattr(mp4, "_aac_rate_for", lambda sr: 48000)
    target = tmp_path / "fallback.mp4"
    try:
        with caplog.at_level("WARNING", logger="trtalk.media.mp4"):
            with Mp4Sink(target, fps=25, audio=np.zeros(16000, np.float32)) as sink:
                for _ in range(25):
                    sink.write(gradient(64, 64))
                assert sink.video_codec == "mpeg4"
        assert "mpeg4" in caplog.text
    finally:
        available_video_encoder.cache_clear()
    with av.open(str(target)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
        aus = c.streams.audio[0]
        assert aus.codec_context.sample_rate == 48000
        assert abs(float(aus.duration * aus.time_base) - 1.0) <= AAC_FRAME / 48000
