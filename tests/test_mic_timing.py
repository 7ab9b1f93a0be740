"""Microphone timing without a sound server: `MicSource` over a fake PortAudio (sounddevice) that
behaves like PulseAudio did when run for real (issue 12, item 10): the first block comes a while
after the stream is opened, then blocks arrive at real-time pace.

The real-server test is tests/test_mic_real.py; these run everywhere, in seconds.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_speech_wave

from trtalk.media.sinks import FrameSink
from trtalk.runtime.clock import RealClock, VirtualClock
from trtalk.runtime.sources import SAMPLE_RATE, MicSource
from trtalk.runtime.stream import StreamConfig, StreamPipeline

BLOCK = 320


class FakeInputStream:
    """sounddevice.InputStream replaying ``FakeDevice.wave`` (then zeros) in real time after
    ``FakeDevice.startup_s``; ``FakeDevice.pause`` = (at_s, for_s, burst): no callbacks for that
    stretch, then (burst) the held-back blocks at once, or (not burst) those samples lost."""

    def __init__(self, *, samplerate: int, channels: int, dtype: str, blocksize: int, device: object,
                 callback: object, latency: object = None) -> None:
        assert samplerate == SAMPLE_RATE and channels == 1 and dtype == "float32"
        self.callback = callback
        self.block = blocksize
        self.latency = 0.04
        self.active = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(FakeDevice.startup_s)
        wave = FakeDevice.wave
        pos, t_next = 0, time.monotonic()
        pause = FakeDevice.pause
        while self.active:
            t_media = pos / SAMPLE_RATE
            if pause is not None and t_media >= pause[0]:
                at_s, for_s, burst = pause
                pause = None
                time.sleep(for_s)
                if burst:
                    t_next += for_s  # the same samples, only late: delivered below without waiting
                else:
                    pos += int(for_s * SAMPLE_RATE)  # these samples are gone
                    t_next += for_s
            x = wave[pos:pos + self.block]
            if len(x) < self.block:
                x = np.concatenate([x, np.zeros(self.block - len(x), np.float32)])
            self.callback(x[:, None], self.block, None, None)
            pos += self.block
            t_next += self.block / SAMPLE_RATE
            time.sleep(max(0.0, t_next - time.monotonic()))

    def close(self, ignore_errors: bool = True) -> None:
        self.active = False
        if self._thread is not None:
            self._thread.join(1.0)


class FakeDevice:
    startup_s = 0.0
    wave = np.zeros(0, np.float32)
    pause: tuple[float, float, bool] | None = None


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> type[FakeDevice]:
    mod = types.SimpleNamespace(InputStream=FakeInputStream, query_devices=lambda: [])
    monkeypatch.setitem(sys.modules, "sounddevice", mod)
    monkeypatch.setattr(FakeDevice, "pause", None)
    return FakeDevice


class AudioSink(FrameSink):
    """Keeps the audio the pipeline drove the frames with (what a recording gets)."""

    accepts_audio = True

    def __init__(self) -> None:
        self.audio: list[np.ndarray] = []

    def write_audio(self, samples: np.ndarray) -> None:
        self.audio.append(np.array(samples, np.float32))

    def write(self, frame: np.ndarray, pts_s: float | None = None) -> None:
        self._frames_written += 1

    def close(self) -> None:
        self._closed = True


class StubRunner:
    """Trivial networks with PC-AVS's shapes (as in test_stream.py)."""

    def encode_identity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(x.shape[0], 2048), torch.zeros(x.shape[0], 512, 7, 7)

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 12)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return mel.mean(3).reshape(mel.shape[0], -1).repeat(1, 7)[:, :500]

    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return torch.zeros(style.shape[0], 3, 224, 224)


def test_slow_starting_device_is_not_lost_audio(fake_sd: type[FakeDevice], face_image_path: Path) -> None:
    """A device whose first block comes 0.6 s after it is opened (PulseAudio took 1-2 s): the
    stream starts at the first sample, so no silence is filled, no loss is warned, and the audio
    that drove the frames (the recording's) is the device's, sample for sample from the start.
    Before the fix the timeline started at open: 'lost (no audio for 251 ms)', ~0.6 s of the
    start replaced by silence."""
    fake_sd.startup_s = 0.6
    fake_sd.wave = make_speech_wave(3.0, seed=3)
    sink = AudioSink()
    cfg = StreamConfig(face=face_image_path, duration=1.5)
    pipe = StreamPipeline(cfg, StubRunner(), MicSource(), None, [sink], RealClock())
    report = pipe.run()
    assert report.frames + report.drops.get("frames_late", 0) == 38
    assert report.audio_silence_s == 0.0
    assert report.extra["audio_lost_episodes"] == 0
    assert 0.55 <= report.extra["audio_start_delay_ms"] / 1000 <= 1.5
    got = np.concatenate(sink.audio)
    assert len(got) >= int(1.5 * SAMPLE_RATE)
    np.testing.assert_array_equal(got, fake_sd.wave[:len(got)])
    # Read no further than the last frame's window needs (+ one block): no reported drift.
    assert 0.0 <= report.av_drift_ms <= 1000 * BLOCK / SAMPLE_RATE


def _feed(src: MicSource, clock: VirtualClock, t: float, blocks: int, spacing: float) -> float:
    x = np.zeros((BLOCK, 1), np.float32)
    for _ in range(blocks):
        clock.advance_to(t)
        src._callback(x, BLOCK, None, None)
        t += spacing
    return t


def _chunks(src: MicSource) -> list:
    out = []
    while (item := src.queue.get_nowait()) is not None:
        out.append(item)
    return out


def test_lost_samples_leave_a_timestamp_gap(fake_sd: type[FakeDevice]) -> None:
    """Callbacks resume on time after 300 ms of samples went missing (an overflow): within a
    resync window the counter jumps ahead by the missing time, so later audio lands where it was
    captured (the consumer fills the gap), instead of every frame waiting 300 ms behind."""
    clock = VirtualClock(100.0)
    src = MicSource()
    src.clock, src.t0 = clock, 100.0
    dt = BLOCK / SAMPLE_RATE
    t = _feed(src, clock, 100.02, 100, dt)  # 2 s steady
    t = _feed(src, clock, t + 0.3, 100, dt)  # 300 ms of samples lost, then steady again
    chunks = _chunks(src)
    last = chunks[-1]
    assert src.skipped_s == pytest.approx(0.3, abs=0.002)
    # The last chunk's timestamp matches when it was captured (its arrival less one block).
    assert last.t == pytest.approx(last.captured - dt, abs=0.002)
    assert all(b.t > a.t for a, b in zip(chunks, chunks[1:]))


def test_late_callbacks_with_their_samples_move_nothing(fake_sd: type[FakeDevice]) -> None:
    """A 200 ms stall (the GIL held, a scheduler hiccup) followed by the held-back blocks in a
    burst: the samples were delayed, not lost, so the timestamps stay contiguous."""
    clock = VirtualClock(0.0)
    src = MicSource()
    src.clock = clock
    dt = BLOCK / SAMPLE_RATE
    t = _feed(src, clock, 0.02, 60, dt)
    t = _feed(src, clock, t + 0.2, 10, 0.001)  # the 10 delayed blocks at once
    t = _feed(src, clock, t, 150, dt)
    chunks = _chunks(src)
    assert src.skipped_s == 0.0
    assert np.allclose(np.diff([c.t for c in chunks]), dt)
