"""Tests for trtalk.audio: PyAV decoding and the PC-AVS mel frontend.

The mel reference is built independently with librosa (a test-only
dependency): lws's padding done by hand, librosa.stft with the lws window,
librosa's Slaney filterbank, then the official dB / normalise steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import mp3_encoder, write_audio_file, write_video, write_wav

from trtalk.audio import (
    MelConfig,
    StreamingMel,
    audio_duration,
    audio_lookahead_s,
    load_audio,
    lws_analysis_window,
    mel_spectrogram,
    mel_windows,
    num_video_frames,
    rms_gain,
    slaney_mel_filterbank,
    window_start,
)
from trtalk.errors import TrtalkError

SR = 16000


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced segments with gliding pitch, noise bursts and exact-zero gaps (float32)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(seconds / 0.25)):
        n = int(0.25 * SR)
        t = np.arange(n) / SR
        kind = i % 4
        if kind in (0, 2):  # voiced: harmonics of a gliding f0 under an envelope
            f0 = rng.uniform(100, 240) + rng.uniform(-40, 40) * t / 0.25
            phase = 2 * np.pi * np.cumsum(f0) / SR
            seg = sum(np.sin(h * phase) / h for h in range(1, 12))
            seg *= np.hanning(n) * rng.uniform(0.1, 0.6)
        elif kind == 1:  # fricative-like noise burst
            seg = rng.normal(0, rng.uniform(0.02, 0.2), n) * np.hanning(n)
        else:  # silence
            seg = np.zeros(n)
        out.append(seg)
    return np.concatenate(out).astype(np.float32)


def reference_mel(wave: np.ndarray) -> np.ndarray:
    """Official PC-AVS mel via librosa, framing padded exactly as lws does."""
    librosa = pytest.importorskip("librosa")
    x = wave.astype(np.float64)
    x = x * (0.1 / max(1e-4, math.sqrt(np.mean(x**2))))
    post = (160 - len(x) % 160) % 160
    # lws pre-pads 1120 zeros, post-pads to a whole hop, and zero-extends the
    # last frames past the end: 1120 more zeros give the same frames with center=False.
    padded = np.concatenate([np.zeros(1120), x, np.zeros(post), np.zeros(1120)])
    d = librosa.stft(padded, n_fft=1280, hop_length=160, win_length=1280,
                     window=lws_analysis_window(), center=False)  # (641, M)
    basis = librosa.filters.mel(sr=SR, n_fft=1280, n_mels=80, fmin=125, fmax=7600)
    s = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(d))) - 20
    return np.clip((s + 100) / 100, 0, 1).T


# ------------------------------------------------------------------ mel ---- #


def test_window_matches_lws_formula() -> None:
    n, hop = 1280, 160
    h = np.array([0.5 * (1 - math.cos(2 * math.pi * (2 * k + 1) / (2 * n))) for k in range(n)])
    a0 = np.sqrt(h)
    norm = np.array([sum(h[j + q * hop] for q in range(n // hop)) for j in range(hop)])
    expected = np.sqrt(a0 * a0 / np.tile(norm, n // hop))
    np.testing.assert_allclose(lws_analysis_window(), expected, rtol=0, atol=1e-12)


def test_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=SR, n_fft=1280, n_mels=80, fmin=125, fmax=7600, dtype=np.float64)
    assert np.abs(slaney_mel_filterbank() - ref).max() <= 1e-6


def test_mel_matches_librosa_reference() -> None:
    wave = speech_like(3.0, seed=0)
    ours = mel_spectrogram(wave)
    ref = reference_mel(wave)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (7 + math.ceil(len(wave) / 160), 80)
    assert np.abs(ours - ref).max() <= 1e-4
    assert 0.0 < ours.mean() < 1.0  # really exercises the dynamic range


@pytest.mark.parametrize("length", [0, 1, 159, 160, 161, 3200, 12345])
def test_frame_count(length: int) -> None:
    wave = np.random.default_rng(length).normal(0, 0.1, length).astype(np.float32)
    assert mel_spectrogram(wave).shape == (7 + math.ceil(length / 160), 80)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_streaming_equals_whole_file(seed: int) -> None:
    rng = np.random.default_rng(seed)
    wave = speech_like(1.0, seed=seed)[: 16000 - int(rng.integers(0, 160))]
    whole = mel_spectrogram(wave)
    core = StreamingMel(gain=rms_gain(wave))
    sizes = [1, 7, 159, 160, 161, 1000, int(rng.integers(1, 4000))]
    outs, pos = [], 0
    while pos < len(wave):
        n = int(rng.choice(sizes))
        outs.append(core.push(wave[pos : pos + n]))
        pos += n
        # Every completed hop has produced exactly one frame, no more.
        assert core.frames_emitted == min(pos, len(wave)) // 160
    outs.append(core.flush())
    streamed = np.concatenate(outs)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-6
    # flush resets: the same object can run a second, identical stream.
    again = np.concatenate([core.push(wave), core.flush()])
    assert np.abs(again - whole).max() <= 1e-6


def test_silence_gives_zero_mel() -> None:
    wave = np.zeros(8000, dtype=np.float32)
    assert rms_gain(wave) == pytest.approx(0.1 / 1e-4)
    mel = mel_spectrogram(wave)
    assert mel.shape == (7 + 50, 80) and not mel.any()


def test_config_defaults() -> None:
    cfg = MelConfig()
    assert cfg.frames_per_second == 100
    assert (cfg.n_fft, cfg.hop, cfg.n_mels, cfg.fmin, cfg.fmax) == (1280, 160, 80, 125.0, 7600.0)


# -------------------------------------------------------------- windows ---- #


def test_windows_official_centring() -> None:
    mel = np.random.default_rng(0).random((120, 80)).astype(np.float32)
    wins = mel_windows(mel, num_frames=30, fps=25.0)
    assert wins.shape == (30, 1, 80, 20) and wins.dtype == np.float32
    for t in range(30):
        assert window_start(t, 25.0) == 4 * (t - 2)
        lo, hi = 4 * (t - 2), 4 * (t - 2) + 20
        expected = np.zeros((20, 80), np.float32)
        expected[max(lo, 0) - lo : min(hi, 120) - lo] = mel[max(lo, 0) : min(hi, 120)]
        np.testing.assert_array_equal(wins[t, 0], expected.T)
    # Edges: t=0 starts at row -8, so its first 8 columns are zero padding;
    # t=29 ends at row 128 > 120, so its last 8 columns are zero.
    assert not wins[0, 0, :, :8].any() and wins[0, 0, :, 8:].all()
    assert not wins[29, 0, :, 12:].any() and wins[29, 0, :, :12].all()
    np.testing.assert_array_equal(wins[10, 0], mel[32:52].T)


def test_window_start_other_fps() -> None:
    assert [window_start(t, 30.0) for t in range(4)] == [-8, -5, -1, 2]  # 0, 3.33, 6.67, 10
    assert [window_start(t, 50.0) for t in range(3)] == [-8, -6, -4]


def test_num_video_frames_rounding_and_short_audio() -> None:
    assert num_video_frames(16000, 25.0) == 25
    assert num_video_frames(3200 + 319, 25.0) == 5  # 5.498 frames
    assert num_video_frames(3200 + 320, 25.0) == 6  # 5.5 rounds up
    assert num_video_frames(4160, 25.0) == 7  # 6.5 rounds up (round() would give 6)
    assert num_video_frames(3200, 25.0) == 5  # exactly 0.2 s is enough
    with pytest.raises(TrtalkError, match="shorter than one 0.2 s window"):
        num_video_frames(3199, 25.0)


def test_lookahead() -> None:
    assert audio_lookahead_s(25.0) == pytest.approx(0.12, abs=1e-12)
    assert audio_lookahead_s(50.0) == pytest.approx(0.12, abs=1e-12)
    assert 0.12 < audio_lookahead_s(30000 / 1001) <= 0.125
    # Check the 25 fps value from first principles: last row of frame t's
    # window ends at sample 160 * (last_row + 1).
    for t in range(5):
        last_row = window_start(t, 25.0) + 19
        assert 160 * (last_row + 1) / SR - t / 25.0 == pytest.approx(0.12)


# ------------------------------------------------------------- decoding ---- #


def _tone(n: int, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate)).astype(np.float32)


def _tone_video(path: Path, audio_rate: int | None, seconds: float = 1.0) -> None:
    """A 64x64 grey-ramp video of ``seconds`` at 25 fps, with a stereo 440 Hz tone if ``audio_rate``."""
    frames = [np.full((64, 64, 3), i * 9, np.uint8) for i in range(int(25 * seconds))]
    tone = None if audio_rate is None else np.stack([_tone(int(audio_rate * seconds), audio_rate)] * 2)
    write_video(path, frames, fps=25, audio=tone, audio_rate=audio_rate or SR)


def _peak_hz(wave: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec)) * SR / len(wave)


# Length tolerance at 16 kHz: PCM must match to 1 sample (the resampler is
# flushed, so only its rounding remains); lossy codecs may add up to one
# codec frame of priming/padding (1152 samples at 44.1 kHz -> 418 at 16 kHz).
_PCM_TOL = 1
_LOSSY_TOL = 420


@pytest.mark.parametrize(
    "suffix,codec,rate,tol",
    [("wav", "pcm_s16le", 44100, _PCM_TOL), ("mp3", "mp3", 44100, _LOSSY_TOL), ("m4a", "aac", 48000, _LOSSY_TOL)],
)
def test_load_audio_formats(tmp_path: Path, suffix: str, codec: str, rate: int, tol: int) -> None:
    if codec == "mp3":
        codec = mp3_encoder() or pytest.skip("this PyAV build has no mp3 encoder")
    path = tmp_path / f"tone.{suffix}"
    tone = _tone(int(rate * 1.5), rate)
    write_audio_file(path, np.stack([tone, tone]), codec, rate)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 24000) <= tol
    assert np.abs(wave).max() <= 1.0
    assert abs(_peak_hz(wave) - 440.0) <= 1.0  # 1.5 s gives 0.67 Hz bins
    assert audio_duration(path) == pytest.approx(1.5, abs=0.05)


def test_load_audio_from_video(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    _tone_video(path, audio_rate=48000)
    wave = load_audio(path)
    assert abs(len(wave) - 16000) <= _LOSSY_TOL
    assert abs(_peak_hz(wave) - 440.0) <= 1.5


def test_load_audio_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(TrtalkError, match="nope.wav"):
        load_audio(missing)

    fake = tmp_path / "notes.mp3"
    fake.write_text("this is a text file, not audio\n" * 4)
    with pytest.raises(TrtalkError, match="notes.mp3"):
        load_audio(fake)

    silent = tmp_path / "silent.mp4"
    _tone_video(silent, audio_rate=None)
    with pytest.raises(TrtalkError, match=r"silent\.mp4 has no audio track"):
        load_audio(silent)

    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(TrtalkError, match=r"empty\.wav is empty"):
        load_audio(empty)


# ------------------------------------------------------------------ SampleQueue


def test_sample_queue_takes_across_chunks_and_pads_with_zeros() -> None:
    """Chunks of odd sizes come out in order in blocks of another size; a block longer than what
    is queued is zero-padded and says how many samples were real."""
    from trtalk.audio import SampleQueue

    q = SampleQueue()
    assert len(q) == 0 and q.take(0)[1] == 0
    pieces = [np.arange(a, b, dtype=np.float32) for a, b in ((0, 3), (3, 10), (10, 11), (11, 24))]
    for p in pieces:
        q.push(p)
    q.push(np.zeros(0, np.float32))  # an empty push changes nothing
    assert len(q) == 24
    a, got = q.take(5)  # inside the first two chunks
    assert got == 5 and a.dtype == np.float32 and a.tolist() == [0, 1, 2, 3, 4]
    b, got = q.take(7)  # across the end of chunk 2, all of chunk 3, into chunk 4
    assert got == 7 and b.tolist() == list(range(5, 12)) and len(q) == 12
    c, got = q.take(15)  # 12 real samples, then zeros
    assert got == 12 and len(c) == 15 and c.tolist() == list(range(12, 24)) + [0, 0, 0]
    assert len(q) == 0
    d, got = q.take(4)  # empty: all zeros
    assert got == 0 and d.tolist() == [0, 0, 0, 0]


def test_sample_queue_matches_one_long_array() -> None:
    """Random pushes (2-D pieces flattened), takes and drops give exactly the
    samples a plain concatenated array would, and the pushed buffers may be reused at once."""
    from trtalk.audio import SampleQueue

    rng = np.random.default_rng(0)
    q = SampleQueue()
    ref = np.zeros(0, np.float32)
    buf = np.empty(64, np.float32)
    for _ in range(300):
        op = rng.integers(3)
        if op == 0:
            k = int(rng.integers(0, 64))
            buf[:k] = rng.standard_normal(k)
            q.push(buf[:k].reshape(-1, 1))
            ref = np.concatenate([ref, buf[:k].astype(np.float32)])
            buf[:] = np.nan  # the queue copied what it kept
        elif op == 1:
            n = int(rng.integers(0, 80))
            out, got = q.take(n)
            want = np.zeros(n, np.float32)
            want[:min(n, len(ref))] = ref[:n]
            assert got == min(n, len(ref))
            np.testing.assert_array_equal(out, want)
            ref = ref[got:]
        else:
            n = int(rng.integers(-5, 40))
            assert q.drop(n) == max(0, min(n, len(ref)))
            ref = ref[max(0, n):]
        assert len(q) == len(ref)


def test_sample_queue_clear() -> None:
    from trtalk.audio import SampleQueue

    q = SampleQueue()
    q.push(np.ones(10, np.float32))
    q.take(3)  # the head chunk partly taken
    q.clear()
    assert len(q) == 0 and q.take(2)[1] == 0
    q.push(np.full(2, 7.0, np.float32))
    assert q.take(3)[0].tolist() == [7.0, 7.0, 0.0]
