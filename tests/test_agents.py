"""The face of a voice agent (trtalk.integrations): the framework-neutral AgentFace, the process's
shared scheduler, the Pipecat service and the LiveKit video generator.

Everything runs in real time on the warp avatar (no checkpoint) at small sizes: each test is a
few seconds of stream. The Pipecat and LiveKit tests skip without those packages (the shared dev
venv has neither: their protobuf>=5 pins disagree with mediapipe's <5 pin, see
requirements-agents.txt); scripts/install.sh installs them, so CI runs them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from trtalk.audio.decode import load_audio
from trtalk.errors import TrtalkError
from trtalk.integrations import shared
from trtalk.integrations.face import AgentFace, FaceOutput

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "trtalk" / "assets" / "astronaut.png"
SPEECH = ROOT / "trtalk" / "assets" / "demo_speech.wav"
FPS = 25.0
RATE = 24000
SLOT = RATE // int(FPS)  # output samples per frame


def _speech(seconds: float) -> np.ndarray:
    x = load_audio(SPEECH, RATE)[: int(seconds * RATE)]
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _wait(cond, timeout: float = 60.0) -> None:
    t = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t, "timed out"
        time.sleep(0.02)


def _stream(outs: list[FaceOutput]) -> np.ndarray:
    """The output audio laid out on the slot timeline (slots the pipeline dropped carry theirs in
    the next frame's audio, so the concatenation is the timeline)."""
    return np.concatenate([o.audio for o in outs]) if outs else np.zeros(0, np.int16)


def _mouth_activity(outs: list[FaceOutput]) -> np.ndarray:
    """Per frame: mean absolute difference from the face's resting frame (pose still: only the
    mouth moves)."""
    rest = outs[0].image.astype(np.float32)
    return np.array([np.abs(o.image.astype(np.float32) - rest).mean() for o in outs])


def _mouth_box(renderer) -> tuple[slice, slice]:
    """Where the mouth is: the pixels that change between the avatar drawn shut and wide open."""
    shut = renderer.frame(0.0, 0.0, np.eye(3)).astype(np.int32)
    wide = renderer.frame(1.0, 0.0, np.eye(3)).astype(np.int32)
    ys, xs = np.nonzero(np.abs(shut - wide).sum(-1) > 30)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def _mouth_luma(image: np.ndarray, box: tuple[slice, slice]) -> float:
    d = image[box].astype(np.float64)
    return float((0.299 * d[..., 0] + 0.587 * d[..., 1] + 0.114 * d[..., 2]).mean())


def _expected_mouth(renderer, audio: np.ndarray, n: int, box: tuple[slice, slice]) -> np.ndarray:
    """The mouth box luma of frames 0..n-1 of the avatar drawn (still pose) with the mouth that
    the slot timeline's audio gives offline (`trtalk.warp.drive.mouth_params`)."""
    from trtalk.integrations.face import _Resampler
    from trtalk.warp.drive import mouth_params

    wave16 = _Resampler(RATE, 16000)(audio.astype(np.float32) / 32768.0)
    wave16 = np.concatenate([wave16, np.zeros(max(0, int(n / FPS * 16000) - len(wave16)), np.float32)])
    params = mouth_params(wave16, n, FPS)
    cache: dict = {}
    out = np.zeros(n)
    for i, (o, rd) in enumerate(params):
        key = (round(float(o), 3), round(float(rd), 3))
        if key not in cache:
            cache[key] = _mouth_luma(renderer.frame(key[0], key[1], np.eye(3)), box)
        out[i] = cache[key]
    return out


def _record_batches(sched) -> list[set[str]]:
    """Spy on the scheduler: the sessions of each batch it generates."""
    seen: list[set[str]] = []
    run = sched.run_batch

    def spy(items):
        seen.append({it.session for it in items})
        return run(items)

    sched.run_batch = spy
    return seen


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def test_face_rejects_bad_arguments(tmp_path):
    with pytest.raises(TrtalkError, match="does not exist"):
        AgentFace(tmp_path / "none.png")
    with pytest.raises(TrtalkError, match="pose"):
        AgentFace(PHOTO, pose="webcam")
    with pytest.raises(TrtalkError, match="sample_rate"):
        AgentFace(PHOTO, sample_rate=100)


def test_face_audio_comes_back_exact_and_lips_follow_it():
    """Pushed speech comes out sample for sample, each frame with its own slot's audio; the frames
    whose audio is loud are the ones whose mouth moves (correlation peaks at lag 0, i.e. sound and
    lips within one frame, inside ITU-R BT.1359's 45 ms lead / 125 ms lag); the segment's end is
    marked once, on the frame holding its last sample; the face runs before and after speech."""
    outs: list[FaceOutput] = []
    face = AgentFace(PHOTO, "warp", fps=FPS, pose="still", sample_rate=RATE, size=96, on_output=outs.append)
    speech = _speech(3.0)
    face.start()
    try:
        _wait(lambda: len(outs) >= 5)
        # in pieces of odd sizes, as a TTS sends them
        for piece in np.array_split(speech, 37):
            face.push_audio(piece, RATE)
        face.flush()
        _wait(lambda: len(outs) > 0 and sum(o.segment_ends for o in outs) == 1)
        n_speech_done = len(outs)
        _wait(lambda: len(outs) >= n_speech_done + 5)
    finally:
        renderer = next(iter(face.shared.avatars.values())).state["renderer"]
        face.close()
    assert face.error is None
    audio = _stream(outs)
    assert len(audio) == (outs[-1].slot + 1) * SLOT  # every slot's audio, once
    start = int(np.flatnonzero(audio)[0] - np.flatnonzero(speech)[0])
    np.testing.assert_array_equal(audio[start:start + len(speech)], speech)
    assert not audio[:start].any() and not audio[start + len(speech):].any()
    # a frame is marked speech exactly when its audio span holds pushed samples
    lo = 0
    for o in outs:
        hi = (o.slot + 1) * SLOT
        assert o.speech == (lo < start + len(speech) and hi > start), o.slot
        lo = hi
    ends = [o for o in outs if o.segment_ends]
    assert len(ends) == 1 and ends[0].slot == (start + len(speech) - 1) // SLOT
    assert outs[0].image.shape[2] == 3 and max(outs[0].image.shape[:2]) == 96

    # lips follow the sound: the mouth box of each frame against the same box of the avatar drawn
    # offline with the mouth its slot's audio calls for, at lag 0 and at lags away from it
    slots = np.array([o.slot for o in outs])
    box = _mouth_box(renderer)
    mouth = np.array([_mouth_luma(o.image, box) for o in outs])
    ref = _expected_mouth(renderer, audio, slots.max() + 8, box)
    r0 = _corr(mouth, ref[slots])
    near = {lag: _corr(mouth, ref[np.clip(slots + lag, 0, len(ref) - 1)]) for lag in (-3, -2, 2, 3)}
    far = max(abs(_corr(mouth, ref[np.clip(slots + lag, 0, len(ref) - 1)])) for lag in range(10, 30))
    assert r0 > 0.6 and r0 > far + 0.2, (r0, far)
    # sound and picture within a frame: lag 0 beats two frames either way (80 ms)
    assert r0 > max(near.values()), (r0, near)


def test_face_keeps_sound_and_lips_together_over_a_stall():
    """A stall (the ticks held 0.5 s, as on an overloaded machine) makes the session place the late
    audio after a gap; the face puts the same gap of silence into its output audio at that place,
    so the speech comes out whole with one silent gap, and after the stall the lips still follow
    the sound at lag 0 (without following the gap they would lag it by the stall)."""
    outs: list[FaceOutput] = []
    face = AgentFace(PHOTO, "warp", fps=FPS, pose="still", sample_rate=RATE, size=96, on_output=outs.append)
    speech = _speech(4.0)
    stalled: list[int] = []

    def stall() -> None:  # on the ticker's thread: holds every face's ticks
        if not stalled and sum(o.speech for o in outs) >= 25:
            stalled.append(len(outs))
            time.sleep(0.5)

    face.start()
    sid = face.shared.ticker.subscribe(stall)
    try:
        _wait(lambda: len(outs) >= 5)
        face.push_audio(speech, RATE)
        _wait(lambda: bool(stalled) and sum(o.speech for o in outs) > 0 and not outs[-1].speech)
        _wait(lambda: len(outs) >= stalled[0] + 90)
    finally:
        face.shared.ticker.unsubscribe(sid)
        renderer = next(iter(face.shared.avatars.values())).state["renderer"]
        face.close()
    assert face.error is None
    assert face._jumped16 > 0.2 * 16000, face._jumped16  # the session did jump
    audio = _stream(outs)
    start = int(np.flatnonzero(audio)[0] - np.flatnonzero(speech)[0])
    seg = audio[start:]
    gap = int(round(face._jumped16 * RATE / 16000))
    # the speech comes out whole, with one silent gap of the jump's length in it
    p = int(np.flatnonzero(seg[:len(speech)] != speech)[0])  # where the output leaves the speech
    nz = np.concatenate([[0], np.cumsum(seg != 0)])
    at = [q for q in range(max(0, p - gap), p + 1) if nz[q + gap] == nz[q]
          and np.array_equal(np.concatenate([seg[:q], seg[q + gap:]])[:len(speech)], speech)]
    assert at, "the speech does not come out whole around one silent gap"
    gap_end = start + at[-1] + gap
    # the lips after the stall: lag 0 against the output audio, as in the test above
    # (the speech's frames after the gap; lags 8-20 hold the stall's 12)
    speech_end = start + at[-1] + gap + len(speech)
    after = [o for o in outs if gap_end < o.slot * SLOT < speech_end + 5 * SLOT]
    slots = np.array([o.slot for o in after])
    box = _mouth_box(renderer)
    mouth = np.array([_mouth_luma(o.image, box) for o in after])
    ref = _expected_mouth(renderer, audio, slots.max() + 30, box)
    r0 = _corr(mouth, ref[slots])
    far = max(abs(_corr(mouth, ref[np.clip(slots + lag, 0, len(ref) - 1)])) for lag in (*range(8, 21), *range(-20, -7)))
    print(f"stall: jumped {face._jumped16 / 16:.0f} ms; lips after it r {r0:.2f} at lag 0, {far:.2f} at 8-20 frames")
    assert r0 > 0.5 and r0 > far + 0.2, (r0, far)


def test_interrupt_stops_sound_and_lips_within_one_frame():
    """After `interrupt` the next frame carries no speech audio, and the frames made from the
    dropped speech are replaced by the last frame sent (held) until fresh ones come."""
    outs: list[FaceOutput] = []
    face = AgentFace(PHOTO, "warp", fps=FPS, pose="still", sample_rate=RATE, size=96, on_output=outs.append)
    face.start()
    try:
        _wait(lambda: len(outs) >= 3)
        face.push_audio(_speech(4.0), RATE)
        _wait(lambda: sum(o.speech for o in outs) >= 10)
        n_before = len(outs)
        face.interrupt()
        _wait(lambda: len(outs) >= n_before + 15)
    finally:
        face.close()
    after = outs[n_before + 1:]  # the frame after the one in flight at the call
    assert not any(o.speech for o in after) and not any(o.audio.any() for o in after)
    held = [o for o in after if o.held]
    assert held, "frames made from the dropped speech were sent"
    assert all(np.array_equal(o.image, held[0].image) for o in held)
    assert not after[-1].held  # fresh frames again
    assert face.interruptions == 1


def test_two_faces_share_one_scheduler_and_batch_together():
    """Two faces in one process with the same model: one SharedModel, and the scheduler's batch
    histogram shows their frames generated in batches of 2 (the ticks are shared, so their frames
    fall due together)."""
    outs: dict[int, list[FaceOutput]] = {0: [], 1: []}
    faces = [AgentFace(PHOTO, "warp", fps=FPS, pose="auto", size=96, on_output=outs[i].append) for i in (0, 1)]
    for f in faces:
        f.start()
    try:
        assert faces[0].shared is faces[1].shared
        sched = faces[0].shared.scheduler
        batches = _record_batches(sched)
        for f in faces:
            f.push_audio(_speech(1.0), RATE)
        _wait(lambda: min(len(o) for o in outs.values()) >= 40)
        sizes = dict(sched.stats.batch_sizes)
    finally:
        for f in faces:
            f.close()
    # most batches hold frames of both faces; the histogram has batches of 2 and more
    both = sum(len(b) == 2 for b in batches)
    assert both >= 0.5 * len(batches), (both, len(batches), sizes)
    assert sum(n for b, n in sizes.items() if b >= 2) >= 0.5 * sum(sizes.values()), sizes
    assert shared.active() == []  # the last face released the model


def test_shared_model_key_separates_models():
    a = shared.model_key(shared.options_for("warp"), 25.0, None)
    b = shared.model_key(shared.options_for("warp"), 25.0, 128)
    c = shared.model_key(shared.options_for("pcavs", model_config="small"), 25.0, None)
    assert a == shared.model_key(shared.options_for("warp"), 25.0, None)
    assert len({a, b, c}) == 3


# ----------------------------------------------------------------------------- Pipecat


def test_pipecat_service_frames_audio_and_interruption():
    """TrtalkVideoService in a Pipecat pipeline (Pipecat's own test runner): TTS audio in, RGB
    images at the frame rate out, the same audio passed on after them (each image before its
    slot's audio, images marked sync_with_audio), an InterruptionFrame passed on and the speech
    after it dropped; EndFrame stops the face."""
    pytest.importorskip("pipecat")
    from pipecat.frames.frames import (InterruptionFrame, OutputImageRawFrame, TTSAudioRawFrame,
                                       TTSStartedFrame, TTSStoppedFrame)
    from pipecat.tests.utils import SleepFrame, run_test

    from trtalk.integrations.pipecat import TrtalkVideoService

    service = TrtalkVideoService(avatar=PHOTO, model="warp", fps=FPS, pose="auto", size=96)
    speech = _speech(2.0)
    chunks = [TTSAudioRawFrame(audio=c.tobytes(), sample_rate=RATE, num_channels=1)
              for c in np.array_split(speech[: RATE // 2], 12)]
    later = [TTSAudioRawFrame(audio=c.tobytes(), sample_rate=RATE, num_channels=1)
             for c in np.array_split(speech[RATE // 2:], 30)]
    frames = ([SleepFrame(sleep=3.0), TTSStartedFrame(), *chunks, TTSStoppedFrame(), SleepFrame(sleep=1.5),
               *later, SleepFrame(sleep=0.3), InterruptionFrame(), SleepFrame(sleep=1.0)])
    down, _ = asyncio.run(run_test(service, frames_to_send=frames, start_timeout=30.0))
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert len(images) >= 50 and all(f.format == "RGB" and f.sync_with_audio for f in images)
    w, h = images[0].size
    assert len(images[0].image) == w * h * 3 and max(w, h) == 96
    assert all(f.sample_rate == 24000 for f in audio)
    out = np.concatenate([np.frombuffer(f.audio, np.int16) for f in audio])
    # the first utterance comes back whole and in order
    start = int(np.flatnonzero(out)[0] - np.flatnonzero(speech)[0])
    np.testing.assert_array_equal(out[start:start + RATE // 2], speech[: RATE // 2])
    # the second was cut by the interruption: less of it came back than was sent
    assert len(out) < len(speech) - RATE // 4
    i_int = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    after = down[i_int:]
    # one image in flight may still carry its slot's audio; after that no speech
    first_img = next(i for i, f in enumerate(after) if isinstance(f, OutputImageRawFrame))
    second_img = next(i for i, f in enumerate(after) if isinstance(f, OutputImageRawFrame) and i > first_img)
    assert not any(isinstance(f, TTSAudioRawFrame) for f in after[second_img:])
    assert sum(isinstance(f, OutputImageRawFrame) for f in after) >= 10  # the face goes on
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    assert service.face.closed and shared.active() == []


def test_example_tts_stand_in_speaks_and_leaves_no_task_behind():
    """examples/pipecat_bot.py's WavSpeaker (the stand-in TTS): TTSStarted, the wav as 20 ms
    TTSAudioRawFrames, TTSStopped; its speaking task ends with the pipeline (Pipecat's teardown,
    `cleanup`), not left pending for the event loop to destroy."""
    pytest.importorskip("pipecat")
    pytest.importorskip("aiohttp")
    import sys

    from pipecat.frames.frames import TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.tests.utils import SleepFrame, run_test

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from pipecat_bot import WavSpeaker
    finally:
        sys.path.remove(str(ROOT / "examples"))
    speaker = WavSpeaker(SPEECH, first_s=0.0, every_s=30.0, speed=20.0)  # 4.1 s of speech in ~0.2 s
    pending: list = []

    async def run():
        down, _ = await run_test(speaker, frames_to_send=[SleepFrame(sleep=1.0)], start_timeout=30.0)
        pending.extend(t for t in asyncio.all_tasks() if "WavSpeaker" in t.get_name() and not t.done())
        return down

    down = asyncio.run(run())
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert isinstance(down[0], TTSStartedFrame) and any(isinstance(f, TTSStoppedFrame) for f in down)
    assert all(len(f.audio) == 2 * 480 for f in audio[:-1])  # 20 ms at 24 kHz
    pcm = np.concatenate([np.frombuffer(f.audio, np.int16) for f in audio])
    np.testing.assert_array_equal(pcm, speaker.pcm)
    assert speaker._task is None and pending == [], pending


def test_two_pipecat_services_batch_together():
    """Two Pipecat services (two bots) in one process: their frames are generated in shared
    batches (the scheduler's histogram), each bot gets its own frames."""
    pytest.importorskip("pipecat")
    from pipecat.frames.frames import OutputImageRawFrame, TTSAudioRawFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from trtalk.integrations.pipecat import TrtalkVideoService

    services = [TrtalkVideoService(avatar=PHOTO, model="warp", fps=FPS, size=96) for _ in range(2)]
    seen: dict = {}

    async def main():
        async def watch():
            while not all(s.face.shared for s in services):
                await asyncio.sleep(0.05)
            seen["shared"] = services[0].face.shared is services[1].face.shared
            sched = services[0].face.shared.scheduler
            batches = _record_batches(sched)
            await asyncio.sleep(2.0)
            seen["sizes"] = dict(sched.stats.batch_sizes)
            seen["batches"] = list(batches)

        speech = _speech(1.0)
        frames = [SleepFrame(sleep=1.0), TTSAudioRawFrame(audio=speech.tobytes(), sample_rate=RATE, num_channels=1),
                  SleepFrame(sleep=4.0)]
        results = await asyncio.gather(*(run_test(s, frames_to_send=frames, start_timeout=30.0) for s in services),
                                       watch())
        return results[:2]

    results = asyncio.run(main())
    for down, _ in results:
        assert sum(isinstance(f, OutputImageRawFrame) for f in down) >= 40
    assert seen["shared"]
    batches = seen["batches"]
    assert sum(len(b) == 2 for b in batches) >= 0.5 * len(batches), (batches, seen["sizes"])


# ----------------------------------------------------------------------------- LiveKit


def test_livekit_generator_contract():
    """TrtalkVideoGenerator driven with the LiveKit SDK's own rtc.AudioFrame (no LiveKit server
    can run here): video frames at the rate (timestamps by count), the pushed audio back in order
    as rtc.AudioFrames each after its video frame (audio time = video time: one slot's audio per
    frame), AudioSegmentEnd after each segment's last audio, clear_buffer mid-segment drops the
    rest of it."""
    pytest.importorskip("livekit.agents")
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

    from trtalk.integrations.livekit import TrtalkVideoGenerator

    async def main():
        gen = TrtalkVideoGenerator(PHOTO, "warp", fps=FPS, sample_rate=RATE, size=96)
        assert isinstance(gen, VideoGenerator)
        await gen.start()
        opts = gen.avatar_options()
        assert (opts.video_fps, opts.audio_sample_rate) == (FPS, RATE) and max(opts.video_width, opts.video_height) == 96
        items: list = []
        times: list[float] = []

        async def consume():
            async for item in gen:
                items.append(item)
                times.append(time.monotonic())

        task = asyncio.create_task(consume())
        speech = _speech(3.0)
        seg1 = speech[: RATE]
        # 10 ms frames, as LiveKit's data stream delivers them, at 48 kHz stereo for the first segment
        stereo48 = np.repeat(load_audio(SPEECH, 48000)[: 48000], 2)
        stereo48 = np.clip(np.round(stereo48 * 32768), -32768, 32767).astype(np.int16)
        for i in range(0, len(stereo48), 960):
            c = stereo48[i:i + 960]
            await gen.push_audio(rtc.AudioFrame(c.tobytes(), 48000, 2, len(c) // 2))
        await gen.push_audio(AudioSegmentEnd())
        await asyncio.sleep(2.0)
        for i in range(0, RATE * 2, 240):  # the second segment at the output rate, mono
            c = speech[RATE + i: RATE + i + 240]
            await gen.push_audio(rtc.AudioFrame(c.tobytes(), RATE, 1, len(c)))
        await asyncio.sleep(0.6)
        gen.clear_buffer()
        await gen.push_audio(AudioSegmentEnd())  # the sender ends the cut segment
        await asyncio.sleep(1.0)
        await gen.aclose()
        await task
        return items, times, seg1

    items, times, seg1 = asyncio.run(main())
    video = [i for i, x in enumerate(items) if isinstance(x, rtc.VideoFrame)]
    audio = [x for x in items if isinstance(x, rtc.AudioFrame)]
    ends = [i for i, x in enumerate(items) if isinstance(x, AudioSegmentEnd)]
    assert all(items[i].type == rtc.VideoBufferType.RGBA for i in video)
    # frames paced at the rate: the span of the frames matches their count at 25 frames/s
    span = times[video[-1]] - times[video[10]]
    assert abs(span - (len(video) - 11) / FPS) < 0.25 * span + 0.2
    # each audio frame follows a video frame and holds one slot (40 ms) or several (dropped frames)
    for i, x in enumerate(items):
        if isinstance(x, rtc.AudioFrame):
            assert isinstance(items[i - 1], rtc.VideoFrame)
            assert x.sample_rate == RATE and x.num_channels == 1 and x.samples_per_channel % SLOT == 0
    out = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio])
    assert len(ends) >= 1
    # the first segment (resampled 48 kHz stereo -> 24 kHz mono) comes back whole before its end mark
    before_end = np.concatenate([np.frombuffer(x.data, np.int16) for x in items[: ends[0]]
                                 if isinstance(x, rtc.AudioFrame)])
    start = int(np.flatnonzero(np.abs(before_end) > 64)[0] - np.flatnonzero(np.abs(seg1) > 64)[0])
    got = before_end[start: start + len(seg1)]

    def envelope(x: np.ndarray) -> np.ndarray:  # RMS per 10 ms (robust to the resampler's delay)
        x = x[: len(x) // 240 * 240].astype(np.float64).reshape(-1, 240)
        return np.sqrt((x ** 2).mean(axis=1))

    assert len(got) >= len(seg1) - 240
    assert _corr(envelope(got), envelope(seg1[: len(got)])) > 0.95
    # the second segment was cleared mid-way: much less than its 2 s came back after the first end
    after = sum(x.samples_per_channel for x in items[ends[0]:] if isinstance(x, rtc.AudioFrame))
    assert after < 1.2 * RATE
    assert sum(x.samples_per_channel for x in audio) == len(out)


def test_livekit_worker_server_request_and_token(monkeypatch):
    """`trtalk livekit-worker`'s pieces that need no LiveKit server: the AgentServer runs jobs as
    threads (one process, one shared scheduler) and reports avatars / max as its load; the
    dispatch metadata round-trips; the avatar's token joins the room as the requested identity,
    publishing on behalf of the agent; missing server settings are a one-line error."""
    pytest.importorskip("livekit.agents")
    from livekit import api
    from livekit.agents.job import JobExecutorType

    from trtalk.integrations.livekit import PUBLISH_ON_BEHALF, AvatarRequest, avatar_token
    from trtalk.integrations.livekit_cli import AvatarJobs, LivekitWorkerCommand, _resolve, build_server

    cmd = LivekitWorkerCommand(url="ws://127.0.0.1:7880", api_key="key", api_secret="s" * 32, max_avatars=4)
    jobs = AvatarJobs(cmd)
    server = build_server(cmd, jobs)
    assert server._job_executor_type == JobExecutorType.THREAD
    assert server.load_fnc() == 0.0
    jobs.active = 3
    assert server.load_fnc() == 0.75
    jobs.active = 9
    assert server.load_fnc() == 1.0

    req = AvatarRequest("agent-1", "trtalk-avatar-agent-1")
    assert AvatarRequest.from_json(req.to_json()) == req
    with pytest.raises(TrtalkError, match="not a trtalk avatar request"):
        AvatarRequest.from_json('{"agent_identity": "x"}')
    claims = api.TokenVerifier("key", "s" * 32).verify(avatar_token("key", "s" * 32, "room-a", req))
    assert claims.identity == "trtalk-avatar-agent-1"
    assert claims.video.room == "room-a" and claims.video.room_join
    assert claims.attributes[PUBLISH_ON_BEHALF] == "agent-1"

    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TrtalkError, match="--url, --api-key, --api-secret missing"):
        _resolve(LivekitWorkerCommand(url=None, api_key=None, api_secret=None))
    monkeypatch.setenv("LIVEKIT_URL", "ws://x")
    monkeypatch.setenv("LIVEKIT_API_KEY", "k")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s")
    got = _resolve(LivekitWorkerCommand(url=None, api_key=None, api_secret=None))
    assert (got.url, got.api_key, got.api_secret) == ("ws://x", "k", "s")

