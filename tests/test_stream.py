"""Tests of the streaming runtime (`trtalk stream`), on CPU, from file sources.

Most tests drive the whole runtime (sources, threads, queues, mel, pose tracking with mediapipe,
sinks, latency) on a virtual clock with a *stub runner*: cheap deterministic tensor ops with the
networks' shapes. On the shared 2-core machines the small PC-AVS config still costs ~1 s per
frame (its pose and audio encoders are full size), so a 10 s run of it would take minutes; the
small model is exercised end to end on a short clip and in the CLI subprocess test instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import AnglesOnlyFamily, make_speech_wave, write_wav

from trtalk.audio import (
    audio_lookahead_s,
    mel_spectrogram,
    mel_windows,
    num_video_frames,
)
from trtalk.errors import TrtalkError
from trtalk.runtime.clock import RealClock, VirtualClock
from trtalk.media.mp4 import Mp4Sink
from trtalk.media.sinks import FrameSink, NullSink
from trtalk.runtime.sources import DEFAULT_BLOCK, AudioFileSource, BoundedQueue, SourceEvent
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.stream import (
    StreamConfig,
    StreamPipeline,
    pose_file_source,
)

FPS = 25.0


class StubRunner:
    """The Runner protocol with trivial maths; records what it was given."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.mels: list[np.ndarray] = []
        self.poses: list[np.ndarray] = []
        self.delay_s = delay_s

    def encode_identity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(x.shape[0], 2048), torch.zeros(x.shape[0], 512, 7, 7)

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).repeat(1, 2)  # B x 12

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        self.mels.extend(mel.numpy())
        return mel.mean(3).reshape(mel.shape[0], -1).repeat(1, 7)[:, :500]

    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.poses.extend(style[:, -12:].numpy())
        level = torch.tanh(style[:, 2048:2051])[:, :, None, None]
        return level.expand(-1, 3, 224, 224).contiguous()


class ListSink(FrameSink):
    def __init__(self) -> None:
        self.pts: list[float] = []
        self._frames = 0

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frame: np.ndarray, pts_s: float | None = None) -> None:
        assert frame.dtype == np.uint8 and frame.shape[2] == 3
        self.pts.append(pts_s)
        self._frames += 1

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def wave10() -> np.ndarray:
    return make_speech_wave(10.0)


@pytest.fixture(scope="module")
def avatar(face_image_path: Path) -> Path:
    return face_image_path


def _recorder(path: Path) -> Mp4Sink:
    """A live recording, as `trtalk stream --record` opens it."""
    return Mp4Sink(path, fps=FPS, push_audio=True, live=True)


def _probe_av(path: Path) -> tuple[float, float, int]:
    """(video seconds, audio seconds, decoded video frames) by decoding."""
    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(c.streams.video[0])]
        n = len(times)
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
        rate = c.streams.audio[0].rate
    # Video length = last frame's time + one frame (frames dropped live leave gaps in between).
    return max(times) + 1 / FPS, samples / rate, n


# ----------------------------------------------------------------------------- units


def test_bounded_queue_drop_oldest_and_block() -> None:
    q: BoundedQueue[int] = BoundedQueue(3, "q", "drop_oldest")
    for i in range(10):
        q.put(i)
    assert len(q) == 3 and q.dropped == 7 and q.max_depth == 3
    assert [q.get_nowait() for _ in range(3)] == [7, 8, 9]
    q.put(SourceEvent("lost", 0.0))
    for i in range(5):
        q.put(i)
    assert isinstance(q.get_nowait(), SourceEvent)  # events are kept in preference
    b: BoundedQueue[int] = BoundedQueue(2, "b", "block")
    b.put(1)
    b.put(2)
    t = threading.Thread(target=b.put, args=(3,))
    t.start()
    time.sleep(0.1)
    assert t.is_alive() and len(b) == 2  # blocked, not grown
    assert b.get() == 1
    t.join(2)
    assert not t.is_alive() and b.max_depth == 2 and b.dropped == 0


def test_streaming_mel_equals_whole_file(avatar: Path) -> None:
    """The stream's per-frame mel windows are the offline frontend's, for the same gain."""
    x = make_speech_wave(3.0, seed=7)
    runner = StubRunner()
    cfg = StreamConfig(face=avatar, batch=3)
    src = AudioFileSource(wave=x, block=137)  # odd block size: chunking must not matter
    report = StreamPipeline(cfg, runner, src, None, [NullSink()], VirtualClock()).run()
    n = num_video_frames(len(x), FPS)
    assert report.frames == n
    expected = mel_windows(mel_spectrogram(x), n, FPS)
    np.testing.assert_allclose(np.stack(runner.mels), expected, atol=1e-6)
    # A fixed gain option: equal to the whole-file frontend with that gain.
    runner2 = StubRunner()
    cfg2 = StreamConfig(face=avatar, audio_gain=2.0)
    StreamPipeline(cfg2, runner2, AudioFileSource(wave=x), None, [NullSink()], VirtualClock()).run()
    from trtalk.audio import StreamingMel

    core = StreamingMel(gain=2.0)
    mel2 = np.concatenate([core.push(x), core.flush()])
    np.testing.assert_allclose(np.stack(runner2.mels), mel_windows(mel2, n, FPS), atol=1e-6)


def test_pipeline_audio_is_an_audio_source_and_its_latency_is_read() -> None:
    """The pipeline's audio source declares block, latency and skipped time (`AudioSource`): a
    source without them is refused at construction; the declared values reach the report."""
    from trtalk.families.base import Avatar
    from trtalk.runtime.pipeline import Pipeline, PipelineConfig
    from trtalk.runtime.sources import Source

    class NotAudio(Source):
        kind = "audio"

        def _run(self) -> None:
            pass

    avatar = Avatar(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), torch.zeros(3))
    cfg = PipelineConfig(audio_gain=1.0)
    with pytest.raises(TypeError, match="AudioSource"):
        Pipeline(cfg, AnglesOnlyFamily(), avatar, NotAudio("audio:x", 4), None, [NullSink()],  # type: ignore[arg-type]
                 VirtualClock())
    src = AudioFileSource(wave=make_speech_wave(0.2))
    assert src.latency is None and src.skipped_s == 0.0 and src.block == DEFAULT_BLOCK
    src.latency, src.skipped_s = 0.035, 0.5  # as a microphone reports them
    pipe = Pipeline(cfg, AnglesOnlyFamily(), avatar, src, None, [NullSink()], VirtualClock(),  # type: ignore[arg-type]
                    motion=True)
    extra = pipe.run().extra
    assert extra["audio_input_latency_ms"] == 35.0 and extra["audio_skipped_s"] == 0.5


def test_lookahead_constant() -> None:
    assert audio_lookahead_s(25.0) == pytest.approx(0.12)


# ----------------------------------------------------------------------------- 10 s replays


def test_ten_seconds_fast_replay(avatar: Path, wave10: np.ndarray, pose_video_path: Path,
                                 tmp_path: Path) -> None:
    """10 s of speech + a looped pose video, virtual clock: counts, pacing, queues, sync, report."""
    runner = StubRunner()
    cfg = StreamConfig(face=avatar, batch=4)
    out = tmp_path / "rec.mp4"
    lst = ListSink()
    with _recorder(out) as rec:
        audio = AudioFileSource(wave=wave10, capacity=16)
        pose = pose_file_source(pose_video_path, cfg, capacity=6)
        pipe = StreamPipeline(cfg, runner, audio, pose, [rec, lst], VirtualClock())
        report = pipe.run()
    assert report.frames == 250 and lst.frames_written == 250
    assert lst.pts == [k / FPS for k in range(250)]
    recs = pipe.latency.records
    t0 = pipe.t0
    for r in recs:
        assert r.t_frame == pytest.approx(t0 + r.index / FPS, abs=1e-9)
    # Emission pacing on the virtual clock: frame k at t_k + 120 ms (the lookahead), except the
    # last frames whose windows run past the end of the audio (emitted when it ended).
    body = [r for r in recs if r.index <= 244]
    np.testing.assert_allclose([r.emitted - r.t_frame for r in body], 0.12, atol=1e-9)
    assert all(b.emitted >= a.emitted for a, b in zip(recs, recs[1:]))
    # Queues bounded.
    for name, q in report.queues.items():
        assert q["max_depth"] <= q["capacity"], name
        assert q["dropped"] == 0, name
    assert report.drops == {}
    # No drift: audio timeline == video timeline (10 s each), lookahead constant.
    assert report.audio_s == pytest.approx(10.0) and report.video_s == pytest.approx(10.0)
    assert report.lookahead_ms["p50"] == pytest.approx(120.0) and report.lookahead_ms["max"] == pytest.approx(120.0)
    # On a virtual clock compute takes no time: a frame goes out the instant the last audio sample
    # its window needs arrives (mic->frame 0), which is 120 ms after its speech and its camera frame.
    assert report.speech_to_frame_ms["p50"] == pytest.approx(120.0)
    assert report.mic_to_frame_ms["p50"] == pytest.approx(0.0, abs=1e-6)
    assert report.mic_to_frame_ms["max"] == pytest.approx(0.0, abs=1e-6)
    assert report.camera_to_frame_ms["p50"] == pytest.approx(120.0)
    assert report.camera_to_frame_ms["max"] == pytest.approx(120.0)
    assert report.fps_achieved == pytest.approx(25.0, rel=0.02)
    # The pose follows the (looping) head motion: pose codes vary.
    poses = np.stack(runner.poses)
    assert poses.std(0).max() > 1e-3
    # Recorder: playable, equal audio and video length within one AAC frame.
    v_s, a_s, n = _probe_av(out)
    assert n == 250 and v_s == pytest.approx(10.0)
    assert abs(a_s - v_s) <= 1024 / 16000 + 1e-6
    # JSON report.
    js = tmp_path / "stats.json"
    report.write_json(js)
    data = json.loads(js.read_text())
    assert data["frames"] == 250 and data["lookahead_ms"]["p50"] == pytest.approx(120.0)


def test_duration_limit_reads_only_the_audio_it_needs(avatar: Path, wave10: np.ndarray) -> None:
    """--duration 1 on a 10 s file, virtual clock: 25 frames, and the audio taken stops near
    what the last frame's window needs (it used to drain the whole file: 9 s of false drift)."""
    cfg = StreamConfig(face=avatar, batch=4, duration=1.0)
    pipe = StreamPipeline(cfg, StubRunner(), AudioFileSource(wave=wave10, capacity=16), None,
                          [ListSink()], VirtualClock())
    report = pipe.run()
    assert report.frames == 25 and report.video_s == pytest.approx(1.0)
    assert 1.0 + 0.08 <= report.audio_s <= 1.0 + 0.5  # lookahead 80-120 ms + at most a few blocks


def test_mic_failure_silence_then_recovery(avatar: Path, wave10: np.ndarray,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Mic lost at 3 s, back at 5 s: the stream goes on, those windows are silence, one warning."""
    runner = StubRunner()
    cfg = StreamConfig(face=avatar)
    loud = np.clip(wave10 + 0.2 * np.sin(np.arange(len(wave10)) * 0.3), -1, 1).astype(np.float32)
    audio = AudioFileSource(wave=loud, fail_at_s=3.0, resume_at_s=5.0)
    with caplog.at_level(logging.INFO, logger="trtalk.runtime"):
        report = StreamPipeline(cfg, runner, audio, None, [NullSink()], VirtualClock()).run()
    assert report.frames == 250
    assert report.audio_silence_s == pytest.approx(2.0, abs=0.01)
    warns = [r for r in caplog.records if r.levelno == logging.WARNING and "microphone" in r.getMessage()]
    assert len(warns) == 1
    assert any("recovered" in r.getMessage() for r in caplog.records)
    mels = np.stack(runner.mels)
    # Frames whose whole window lies inside the gap see pure silence (closed mouth) ...
    assert np.abs(mels[85:115]).max() == 0.0
    # ... and the lips follow the audio again after it is back.
    assert mels[140:].max() > 0.1 and mels[:60].max() > 0.1


def test_camera_failure_holds_pose_and_recovers(avatar: Path, wave10: np.ndarray, pose_video_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    runner = StubRunner()
    cfg = StreamConfig(face=avatar, pose_smoothing=0.0, lost_hold_s=0.3, lost_ease_s=1.0)
    audio = AudioFileSource(wave=wave10[: 6 * 16000])
    pose = pose_file_source(pose_video_path, cfg, fail_at_s=2.0, resume_at_s=4.0)
    with caplog.at_level(logging.INFO, logger="trtalk.runtime"):
        pipe = StreamPipeline(cfg, runner, audio, pose, [NullSink()], VirtualClock())
        report = pipe.run()
    assert report.frames == 150
    poses = np.stack(runner.poses)
    ref = pipe.avatar.ref_pose.numpy().reshape(-1)
    held_pose = poses[49]  # last frame before the outage (t = 1.96 s)
    # held for 0.3 s ...
    np.testing.assert_allclose(poses[50:57], np.repeat(held_pose[None], 7, 0), atol=1e-6)
    # ... then eased to the avatar's pose, reached after hold + ease = 1.3 s
    np.testing.assert_allclose(poses[83:100], np.repeat(ref[None], 17, 0), atol=1e-6)
    d = np.linalg.norm(poses[57:83] - ref, axis=1)
    assert np.all(np.diff(d) <= 1e-6)  # monotone approach
    # recovered: the pose follows the video again
    assert np.abs(poses[105:] - ref).max() > 1e-3
    held = np.flatnonzero(pipe.pose.held)
    assert report.camera_lost_s == pytest.approx(2.0, abs=0.05), (held.tolist(), [
        (s.index, s.found) for s in pipe.pose._samples][-5:])
    warns = [r for r in caplog.records if r.levelno == logging.WARNING and "camera" in r.getMessage()]
    assert len(warns) == 1
    assert any("camera is back" in r.getMessage() for r in caplog.records)


def test_realtime_drops_are_bounded_and_counted(avatar: Path, wave10: np.ndarray) -> None:
    """Compute slower than real time on a real clock: stale frames dropped, counted; fps reported."""
    runner = StubRunner(delay_s=0.12)  # ~0.12 s per batch: cannot keep 25 fps with batch 2
    cfg = StreamConfig(face=avatar, batch=2, max_delay_s=0.2, duration=2.0)
    audio = AudioFileSource(wave=wave10, capacity=8)
    lst = ListSink()
    report = StreamPipeline(cfg, runner, audio, None, [lst], RealClock()).run()
    assert report.frames == lst.frames_written < 50
    assert report.drops.get("frames_late", 0) > 0
    assert report.frames + report.drops["frames_late"] <= 50
    assert 0 < report.fps_achieved < 25.0
    assert report.speech_to_frame_ms["p50"] >= 120.0
    assert all(b > a for a, b in zip(lst.pts, lst.pts[1:]))
    for q in report.queues.values():
        assert q["max_depth"] <= q["capacity"]


# ----------------------------------------------------------------------------- errors


def test_avatar_without_face_fails_at_start(tmp_path: Path, wave10: np.ndarray) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 127, np.uint8))
    with pytest.raises(TrtalkError, match="no face"):
        StreamPipeline(StreamConfig(face=blank), StubRunner(), AudioFileSource(wave=wave10), None,
                       [NullSink()], VirtualClock())


def test_missing_sounddevice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtalk.runtime.sources import MicSource

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(TrtalkError, match="pip install sounddevice"):
        MicSource()


def test_virtual_cam_without_backend(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                     avatar: Path, tmp_path: Path) -> None:
    from trtalk.cli import main
    from trtalk.runtime import livesinks

    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    wav = write_wav(tmp_path / "a.wav", make_speech_wave(1.0))
    rc = main(["stream", "--avatar", str(avatar), "--audio", str(wav), "--virtual-cam"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pyvirtualcam" in err and ("v4l2loopback" in err or "OBS" in err)
    assert "v4l2loopback" in livesinks.virtual_camera_hint() or "OBS" in livesinks.virtual_camera_hint()


def test_stream_says_the_built_in_avatar_once(avatar: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """`trtalk stream` without --checkpoint names the warp avatar it falls back to, once (the
    input plan asks the family's spec before the model loads: that must not say it again)."""
    from trtalk.cli import main

    wav = write_wav(tmp_path / "a.wav", make_speech_wave(0.4))
    out = tmp_path / "s.mp4"
    caplog.set_level(logging.INFO, logger="trtalk")
    assert main(["stream", "--avatar", str(avatar), "--audio", str(wav), "--duration", "0.2",
                 "--record", str(out)]) == 0
    said = [r for r in caplog.records if "using the built-in warp avatar" in r.getMessage()]
    assert len(said) == 1 and out.is_file()


def test_devices_lists_everything(capsys: pytest.CaptureFixture) -> None:
    from trtalk.cli import main

    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for word in ("microphones:", "cameras:", "virtual camera:", "GPUs:", "backends:"):
        assert word in out


# ----------------------------------------------------------------------------- small model


@pytest.mark.slow
def test_small_model_end_to_end(avatar: Path, tmp_path: Path) -> None:
    """The real (small-config, random-weight) networks through the runtime: 0.6 s, recorded."""
    family = ModelOptions(model="pcavs", model_config="small").open()
    assert family.random_weights
    x = make_speech_wave(0.6, seed=3)
    cfg = StreamConfig(face=avatar, batch=8)
    out = tmp_path / "small.mp4"
    with _recorder(out) as rec:
        report = StreamPipeline(cfg, family, AudioFileSource(wave=x), None, [rec], VirtualClock()).run()
    assert report.frames == 15
    v_s, a_s, n = _probe_av(out)
    assert n == 15 and abs(a_s - v_s) <= 1024 / 16000 + 1e-6


@pytest.mark.slow
def test_cli_sigint_finalises_recording(avatar: Path, tmp_path: Path) -> None:
    """`trtalk stream --realtime --record`: SIGINT after frames flow -> exit 0, playable mp4, stats JSON."""
    wav = write_wav(tmp_path / "speech.wav", make_speech_wave(30.0))
    out = tmp_path / "live.mp4"
    js = tmp_path / "stats.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "trtalk.cli", "stream", "--avatar", str(avatar), "--audio", str(wav),
           "--pose-static", "--record", str(out), "--realtime", "--model", "pcavs", "--model-config", "small",
           "--stats", "0.5", "--stats-json", str(js), "--batch", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    lines: list[str] = []
    seen = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "stats:" in line:
                seen.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        assert seen.wait(120), "no frames within 120 s:\n" + "".join(lines[-20:])
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    th.join(5)
    assert rc == 0, "".join(lines[-20:])
    assert out.exists() and not list(tmp_path.glob(".live*"))
    v_s, a_s, n = _probe_av(out)
    assert n >= 1 and abs(a_s - v_s) <= 1024 / 16000 + 1e-6
    data = json.loads(js.read_text())
    assert data["frames"] >= 1 and data["realtime"] is True
    assert data["speech_to_frame_ms"]["p50"] >= 120.0


def test_recorder_pads_odd_frame_sizes(tmp_path: Path) -> None:
    """Webcam paste-back frames can be odd-sized; yuv420p needs even: padded, not refused."""
    out = tmp_path / "odd.mp4"
    with _recorder(out) as rec:
        rec.write_audio(np.zeros(16000, np.float32))
        for k in range(25):
            rec.write(np.full((71, 101, 3), 10 * (k % 20), np.uint8))
    v_s, a_s, n = _probe_av(out)
    assert n == 25 and v_s == pytest.approx(1.0) and abs(a_s - v_s) <= 1024 / 16000 + 1e-6
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (102, 72)
