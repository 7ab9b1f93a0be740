"""`trtalk serve` without a browser: the scheduler (EDF, batches across sessions, deadlines,
errors), PC-AVS's batch across avatars, upload limits, and the server over WebRTC with headless
aiortc clients (protocol, token, admission, faults, clean-up)."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from concurrent.futures import Future

import numpy as np
import pytest
import torch

pytest.importorskip("aiohttp")
pytest.importorskip("aiortc")

from trtalk.errors import TrtalkError  # noqa: E402
from trtalk.families.base import Avatar, ModelFamily
from trtalk.families.pcavs.runtime import PCAVSFamily  # noqa: E402
from trtalk.serve.scheduler import BatchScheduler, WorkerError, capacity_fps  # noqa: E402

FPS = 25.0
ASTRONAUT = Path(__file__).resolve().parent.parent / "trtalk" / "assets" / "astronaut.png"


# ----------------------------------------------------------------------------- scheduler


class FakeFamily(ModelFamily):
    """Records each generate_many call; a crop's value is its frame index; ``fail`` avatars raise."""

    name = "fake"
    output_size = 4

    def __init__(self, cost_s: float = 0.0) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, int]]] = []
        self.cost_s = cost_s
        self.fail: set[str] = set()

    def make_avatar(self, image, name, **kw):  # pragma: no cover - not used
        raise NotImplementedError

    def mouth(self, state, mel, frames):
        return torch.tensor([[float(k)] for k in frames])

    def pose(self, state, inputs):  # pragma: no cover - not used
        raise NotImplementedError

    def still_pose(self, avatar, frames, fps):
        return torch.zeros(len(frames), 3)

    def generate(self, state, avatar, mouth, pose, frames=None, camera=None):  # pragma: no cover - generate_many is used
        raise NotImplementedError

    def generate_many(self, avatars, mouth, pose):
        time.sleep(self.cost_s)
        names = [a.state["name"] for a in avatars]
        bad = self.fail.intersection(names)
        if bad:
            raise RuntimeError(f"bad avatar {sorted(bad)[0]}")
        self.calls.append([(n, int(m[0])) for n, m in zip(names, mouth)])
        return np.stack([np.full((4, 4, 3), int(m[0]) % 256, np.uint8) for m in mouth])


def _avatar(name: str) -> Avatar:
    z = np.zeros((4, 4, 3), np.uint8)
    return Avatar(z, z, np.eye(2, 3), torch.zeros(3), {"name": name})


def _submit(s: BatchScheduler, fam: FakeFamily, av: Avatar, frames: list[int], deadline: float) -> list[Future]:
    mel = torch.zeros(len(frames), 1, 80, 20)
    return s.submit(av.state["name"], fam, av, mel, frames, torch.zeros(len(frames), 3),
                    [deadline + 0.001 * i for i in range(len(frames))])


def test_scheduler_batches_across_sessions_earliest_deadline_first() -> None:
    fam = FakeFamily()
    s = BatchScheduler(fam, max_batch=4, gather_s=0.0)
    a, b, c = _avatar("a"), _avatar("b"), _avatar("c")
    now = time.monotonic()
    fa = _submit(s, fam, a, [0, 1], now + 3.0)
    fb = _submit(s, fam, b, [10], now + 1.0)
    fc = _submit(s, fam, c, [20, 21, 22], now + 2.0)
    s.start()
    try:
        crops = [f.result(5) for f in fb + fc + fa]
    finally:
        s.close()
    # 6 frames, batch bound 4: the four earliest deadlines (b, then c's three) first, across
    # three sessions in one generator call; then a's two.
    assert fam.calls == [[("b", 10), ("c", 20), ("c", 21), ("c", 22)], [("a", 0), ("a", 1)]]
    assert [int(x[0, 0, 0]) for x in crops] == [10, 20, 21, 22, 0, 1]
    assert dict(s.stats.batch_sizes) == {4: 1, 2: 1}


def test_scheduler_uses_mouth_codes_given_with_the_frames() -> None:
    """A session whose lips come from a video (`--mouth`) submits mouth codes: the family's audio
    mouth is not asked for those frames, and one batch mixes them with audio-driven frames."""
    fam = FakeFamily()
    s = BatchScheduler(fam, max_batch=4, gather_s=0.0)
    a, b = _avatar("a"), _avatar("b")
    now = time.monotonic()
    fa = s.submit("a", fam, a, torch.zeros(2, 1, 80, 20), [0, 1], torch.zeros(2, 3), [now + 1.0, now + 1.001],
                  mouth=torch.tensor([[40.0], [41.0]]))
    fb = _submit(s, fam, b, [5], now + 1.002)
    s.start()
    try:
        crops = [f.result(5) for f in fa + fb]
    finally:
        s.close()
    assert fam.calls == [[("a", 40), ("a", 41), ("b", 5)]]
    assert [int(x[0, 0, 0]) for x in crops] == [40, 41, 5]


def test_scheduler_drops_expired_frames_without_running_them() -> None:
    fam = FakeFamily()
    s = BatchScheduler(fam, max_batch=8)
    a = _avatar("a")
    late = _submit(s, fam, a, [0, 1], time.monotonic() - 0.01)
    ok = _submit(s, fam, a, [2], time.monotonic() + 5.0)
    s.start()
    try:
        assert [f.result(5) for f in late] == [None, None]
        assert int(ok[0].result(5)[0, 0, 0]) == 2
    finally:
        s.close()
    assert fam.calls == [[("a", 2)]]
    assert s.stats.dropped == 2


def test_scheduler_gathers_but_never_past_the_deadline() -> None:
    """A lone frame with a 0.3 s deadline is run within it although the gather time is 5 s."""
    fam = FakeFamily()
    s = BatchScheduler(fam, max_batch=8, gather_s=5.0)
    s.start()
    try:
        t = time.monotonic()
        f = _submit(s, fam, _avatar("a"), [7], t + 0.3)[0]
        assert int(f.result(5)[0, 0, 0]) == 7
        waited = time.monotonic() - t
    finally:
        s.close()
    assert waited < 2.5  # not the 5 s gather time: bounded by the deadline (generous for CI)


def test_scheduler_error_reaches_only_the_failing_session() -> None:
    fam = FakeFamily()
    fam.fail.add("bad")
    s = BatchScheduler(fam, max_batch=8, gather_s=0.0)
    now = time.monotonic() + 5
    good = _submit(s, fam, _avatar("good"), [1, 2], now)
    bad = _submit(s, fam, _avatar("bad"), [3], now)
    s.start()
    try:
        assert [int(f.result(5)[0, 0, 0]) for f in good] == [1, 2]
        with pytest.raises(WorkerError, match="RuntimeError: bad avatar bad"):
            bad[0].result(5)
    finally:
        s.close()
    assert s.stats.errors == 1


def test_scheduler_call_runs_on_the_worker_thread() -> None:
    s = BatchScheduler(FakeFamily())
    s.start()
    try:
        assert s.call(lambda: threading.current_thread().name) == "trtalk-serve-worker"
    finally:
        s.close()


def test_warm_up_measures_frames_per_second_per_batch_size() -> None:
    """The admission figure comes from timed batches: a family costing 20 ms per call whatever the
    batch makes about 50 frames/s at batch 1 and 400 at batch 8."""
    from trtalk.serve.scheduler import measure_throughput

    fam = FakeFamily(cost_s=0.02)
    s = BatchScheduler(fam, max_batch=8)
    tp = measure_throughput(s, _avatar("a"), FPS, budget_s=1.0, repeats=2)
    assert sorted(tp) == [1, 2, 4, 8]
    assert 30 < tp[1] <= 50.5 and 240 < tp[8] <= 404
    assert capacity_fps(tp, s.cost_s, budget_s=0.5) == tp[8]


def test_capacity_uses_batches_that_fit_the_budget() -> None:
    tp = {1: 100.0, 4: 300.0, 8: 400.0}
    costs = {1: 0.01, 4: 0.0133, 8: 0.02}
    assert capacity_fps(tp, costs, 0.015) == 300.0
    assert capacity_fps(tp, costs, 1.0) == 400.0


@pytest.mark.slow
def test_pcavs_generate_many_matches_per_avatar_generate(monkeypatch) -> None:
    """One generator call over items of two avatars gives each item what its own avatar's
    generate gives (the generator takes per-sample identity codes)."""
    from trtalk.families.pcavs.model import PCAVS, PCAVSConfig

    import trtalk.families.pcavs.runtime as family_mod

    # compare the generator's float output (small random weights give images close to grey)
    monkeypatch.setattr(family_mod, "to_uint8", lambda x: x.float().numpy())
    torch.manual_seed(0)
    net = PCAVS(PCAVSConfig.small()).eval()
    fam = PCAVSFamily(net, random_weights=True)
    x1 = torch.rand(1, 3, 224, 224) * 2 - 1
    x2 = torch.rand(1, 3, 224, 224) * 2 - 1
    avs = []
    for x in (x1, x2):
        with torch.no_grad():
            iv, im = net.encode_identity(x)
            rp = net.encode_pose(x)[0]
        avs.append(Avatar(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), rp,
                          {"id_vec": iv, "id_map": im}))
    with torch.no_grad():
        mouth = fam.mouth(fam.new_state(), torch.randn(3, 1, 80, 20), [0, 1, 2])
    pose = torch.stack([avs[0].ref_pose, avs[1].ref_pose, avs[0].ref_pose])
    batch = fam.generate_many([avs[0], avs[1], avs[0]], mouth, pose)
    one = [fam.generate(fam.new_state(), avs[i], mouth[j:j + 1], pose[j:j + 1])[0] for j, i in enumerate([0, 1, 0])]
    between = np.abs(batch[0] - batch[1]).max()  # the two avatars' frames differ
    assert batch.shape[0] == 3
    assert np.abs(batch - np.stack(one)).max() < 1e-3 * between
    assert between > 1e-3


# ----------------------------------------------------------------------------- uploads


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_upload_checks_the_header_before_decoding() -> None:
    from trtalk.serve.app import image_from_bytes

    with pytest.raises(TrtalkError, match="not an image"):
        image_from_bytes(b"GIF89a" + b"\0" * 100, 16_000_000)
    # a 100000 x 100000 "bomb": refused from the 33-byte header, nothing decoded
    with pytest.raises(TrtalkError, match="100000x100000 pixels; the limit is 16 megapixels"):
        image_from_bytes(_png_header(100_000, 100_000) + b"\0" * 64, 16_000_000)
    with pytest.raises(TrtalkError, match="could not be decoded"):
        image_from_bytes(_png_header(64, 64) + b"garbage", 16_000_000)


# ----------------------------------------------------------------------------- server


def _http(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class BoomRenderer:
    def frame(self, *a, **k):
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def server():
    """A warp-avatar server (no warm-up: a fixed capacity of 2 sessions), 1.5 s stall timeout."""
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server, ServerLimits
    from trtalk.serve.cli import run_in_thread

    threads_before = {t.name for t in threading.enumerate()}
    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS),
                 limits=ServerLimits(stall_timeout_s=1.5, control_rate=20.0, max_upload_bytes=200_000,
                                     header_timeout_s=3.0),
                 capacity_fps_override=2 * FPS / 0.9 + 1)
    srv.prepare()
    good = srv.avatars["astronaut"]
    # The warp avatar's frames are the whole photo: the client reads the mouth where it is there.
    av = good.state["renderer"].avatar
    lips = av.mesh[[61, 291, 13, 14, 0, 17], :2]
    fh, fw = av.frame_hw
    io = av.interocular
    MOUTH_BOX[:] = [((lips[:, 0].min() - 0.1 * io) / fw, (lips[:, 1].min() - 0.1 * io) / fh,
                     (lips[:, 0].max() + 0.1 * io) / fw, (lips[:, 1].max() + 0.35 * io) / fh)]
    srv.avatars["boom"] = Avatar(good.image, good.crop, good.crop_m, good.ref_pose, {"renderer": BoomRenderer()})
    url, stop = run_in_thread(srv)
    yield srv, url
    stop()
    leftover = {t.name for t in threading.enumerate() if t.name.startswith("trtalk-")} - threads_before
    assert leftover == set()


#: The astronaut's mouth box in the warp avatar's frames (the photo's own frame), set by `server`.
MOUTH_BOX: list[tuple[float, float, float, float]] = []


def _client(url: str, wave: np.ndarray, seconds: float, **kw):
    from trtalk.serve.client import run_client

    if MOUTH_BOX:
        kw.setdefault("mouth_box", MOUTH_BOX[0])
    return asyncio.run(run_client(url, wave, seconds, **kw))


def _many(url: str, jobs: list[tuple[np.ndarray, float, dict]]):
    from trtalk.serve.client import run_client

    async def main():
        return await asyncio.gather(*[run_client(url, w, s, **kw) for w, s, kw in jobs])

    return asyncio.run(main())


def _scrape_later(url: str, delay: float) -> str:
    time.sleep(delay)
    return _http(url)[1].decode()


def _wait_idle(srv, timeout: float = 10.0) -> None:
    t = time.monotonic() + timeout
    while (not srv.idle or any(n.name.startswith("trtalk-session") for n in threading.enumerate())) \
            and time.monotonic() < t:
        time.sleep(0.05)
    assert not srv.sessions


def _delivered(res) -> bool:
    """The session delivered video on its frame clock: frames arrived, their timestamps only
    increase, and they never came faster than the 25 fps clock (30 allows arrival jitter). How
    many frames a loaded 2-core machine makes is speed, which benchmarks/serve_load.py holds;
    tests assert no frames/s floor."""
    pts = np.asarray(res.frame_pts)
    return len(pts) >= 10 and bool((np.diff(pts) > 0).all()) and res.fps() <= 30.0


def test_session_frames_latency_and_mouth_follow_the_speech(server, demo_speech) -> None:
    srv, url = server
    # Real speech (the shipped TTS demo, 4.64 s, looped by the client): the mouth model was
    # trained on speech, and the synthetic `speech_wave` has no articulation to follow.
    speech_wave = demo_speech
    res = _client(url, speech_wave, 5.0, mouth_box=None)  # the box the server announces
    _wait_idle(srv)
    assert res.status == 200 and res.error is None and res.session
    ready = res.messages[0]
    assert ready["type"] == "ready" and np.allclose(ready["mouth_box"], MOUTH_BOX[0], atol=1e-6)
    assert _delivered(res), (len(res.frame_pts), res.fps())
    assert res.audio_frames > 150  # 20 ms frames of the delayed microphone audio, ~5 s
    st = res.stats
    assert st is not None and st["frames"] > 50 and 0 < st["mic_to_frame_ms"]["p50"] < 500
    # The mouth box shows the mouth the speech calls for, on time: frame k shows wave time k / 25
    # (the wave loops). The reference is the mouth box of the avatar rendered offline with the
    # mouth the same audio gives (`mouth_params`, still pose): the box's mean luma is not
    # monotone in the opening (teeth brighten it up to ~0.5 open, the cavity darkens it beyond),
    # so the speech's loudness is no reference for it. Measured beside a CPU render: 0.42 at
    # the right lag, 0.31 one frame off, under 0.2 at 10 frames or more.
    k = np.round((np.asarray(res.frame_pts) - res.frame_pts[0]) * FPS / 90000).astype(int)
    ref = _expected_mouth_luma(srv, speech_wave, MOUTH_BOX[0])
    mouth = np.asarray(res.mouth)
    r = np.corrcoef(mouth, ref[k % len(ref)])[0, 1]
    lags = [abs(np.corrcoef(mouth, ref[(k + lag) % len(ref)])[0, 1]) for lag in range(10, len(ref) - 10)]
    # The right lag stands clear of the typical wrong one (median of lags >= 10 frames off) and is
    # not beaten by any wrong lag beyond noise. Not a fixed margin over the best wrong lag: the
    # shipped demo speech is rhythmic, so the mouth's opening itself correlates 0.35 with its own
    # copy 95 frames later (mouth_params, one loop). Measured on main 578c7bb with the mouth model
    # trained on 26 clips: right lag 0.34-0.36 / 0.51, best wrong lag 0.28-0.32 / 0.46 (idle /
    # loaded), median wrong lag 0.08. Why not higher: the session's "still" pose is the idle head
    # motion (`WarpFamily.still_pose`) while the reference is drawn at the photo's pose, and that
    # motion alone takes the box luma's correlation to 0.28 with the same mouth; the mouth itself is
    # driven as offline (the same `mouth_from_window` and follower; the live running gain against
    # the whole-file gain: openings correlate 0.997 on this speech, 0.96-1.00 on the 14 PC-AVS clips).
    assert r > 0.3 and r > float(np.median(lags)) + 0.15 and r > max(lags) - 0.05, \
        (r, max(lags), float(np.median(lags)))


def _expected_mouth_luma(srv, wave: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The client's mouth ``box`` luma of each frame of one loop of ``wave`` (25 fps) as the
    astronaut's renderer draws the mouth that `mouth_params` gives for it (still pose)."""
    from trtalk.serve.client import mouth_luma
    from trtalk.warp.drive import mouth_params

    n = int(round(len(wave) / 16000 * FPS))
    looped = np.tile(wave, 3)  # the middle loop has the loop's own audio before and after it
    params = mouth_params(looped, 3 * n, FPS)[n:2 * n]
    renderer = srv.avatars["astronaut"].state["renderer"]
    return np.array([mouth_luma(renderer.frame(float(o), float(rd), np.eye(3)), box) for o, rd in params])


def test_metrics_and_healthz(server, speech_wave) -> None:
    srv, url = server
    code, body, _ = _http(url + "/metrics")
    text = body.decode()
    assert code == 200
    assert "trtalk_sessions_active 0" in text
    assert 'trtalk_batch_size_bucket{le="+Inf"}' in text
    frames = int(float(next(l for l in text.splitlines() if l.startswith("trtalk_frames_total")).split()[1]))
    code, body, _ = _http(url + "/healthz")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok" and health["capacity_sessions"] == 2
    assert health["worker_alive"] is True
    assert frames >= 0 and srv.metrics.frames == frames


def test_two_servers_in_one_process_keep_their_own_metrics() -> None:
    """Each server counts into its own prometheus_client registry, not the process-wide one."""
    import prometheus_client

    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Capacity, Server

    a, b = (Server(WarpFamily(FPS), PipelineConfig(fps=FPS)) for _ in range(2))
    a.capacity = b.capacity = Capacity({}, 2 * FPS)  # as prepare() sets it, without the worker
    a.metrics.session_started("s1")
    for _ in range(3):
        a.metrics.frame("s1", 0.12)
    b.metrics.session_refused()
    ta, tb = a.metrics.render(a), b.metrics.render(b)
    assert "trtalk_frames_total 3.0" in ta and "trtalk_frames_total 0.0" in tb
    assert 'trtalk_session_mic_to_frame_seconds_count{session="s1"} 3.0' in ta and 'session="s1"' not in tb
    assert "trtalk_sessions_refused_total 0.0" in ta and "trtalk_sessions_refused_total 1.0" in tb
    assert (a.metrics.frames, b.metrics.frames, b.metrics.refused) == (3, 0, 1)
    a.metrics.session_ended("s1", {"late": 2})
    ta = a.metrics.render(a)
    assert 'session="s1"' not in ta and 'trtalk_frames_dropped_total{reason="late"} 2.0' in ta
    assert "trtalk_frames_total" not in prometheus_client.generate_latest().decode()


def test_admission_refuses_beyond_capacity_and_others_keep_their_rate(server, speech_wave) -> None:
    srv, url = server
    from trtalk.serve.client import run_client

    async def late():  # the third asks once the first two are in
        await asyncio.sleep(1.0)
        return await run_client(url, speech_wave, 0.1)

    async def main():
        jobs = [run_client(url, speech_wave, 4.0), run_client(url, speech_wave, 4.0), late()]
        scrape = asyncio.get_running_loop().run_in_executor(None, _scrape_later, url + "/metrics", 3.0)
        return await asyncio.gather(*jobs), await scrape

    res, during = asyncio.run(main())
    _wait_idle(srv)
    # while they ran: two per-session latency series next to the overall one
    counts = re.findall(r'trtalk_session_mic_to_frame_seconds_count\{session="([0-9a-f]+)"\} (\d+)', during)
    assert len(counts) == 2 and all(int(n) > 0 for _, n in counts), counts
    assert "trtalk_sessions_active 2" in during
    ok = [r for r in res if r.status == 200]
    refused = [r for r in res if r.status == 503]
    assert len(ok) == 2 and len(refused) == 1 and res[2] is refused[0]
    assert "the server is full" in refused[0].error and "2 session(s) at 25 fps" in refused[0].error
    assert all(_delivered(r) for r in ok), [(len(r.frame_pts), r.fps()) for r in ok]
    assert max(srv.scheduler.stats.batch_sizes) >= 2  # frames of several sessions shared batches
    assert srv.metrics.refused >= 1


def test_faults_reach_only_their_session(server, speech_wave) -> None:
    """A worker error (the "boom" avatar), a stalled microphone and a flooded control channel
    each end their own session with a clear message; a healthy session beside them keeps delivering frames."""
    srv, url = server
    from trtalk.serve.capacity import FixedCost

    srv.set_cost(FixedCost(1 / (3 * FPS / 0.9 + 1)))  # room for the three
    try:
        healthy, boom, stalled = _many(url, [
            (speech_wave, 5.0, {}),
            (speech_wave, 5.0, {"avatar": "boom"}),
            (speech_wave, 5.0, {"stall_after_s": 0.5}),
        ])
    finally:
        srv.set_cost(FixedCost(1 / (2 * FPS / 0.9 + 1)))
    assert boom.error and "inference failed: RuntimeError: boom" in boom.error
    assert stalled.error and "no audio from the microphone for 1.5 s" in stalled.error
    assert healthy.error is None and _delivered(healthy), (len(healthy.frame_pts), healthy.fps())
    flood = _client(url, speech_wave, 3.0, flood=300)
    assert flood.error and "control channel flooded" in flood.error
    _wait_idle(srv)


def test_lips_from_the_camera(server, speech_wave) -> None:
    """The page's "Lips: camera" (the stream's ``--mouth webcam``): the lips come from the camera
    frames the webcam pose tracks. The camera here is a still photo with a closed mouth, so the
    avatar's mouth stays still while the speech goes on (with the voice it follows the speech:
    `test_session_frames_latency_and_mouth_follow_the_speech`)."""
    srv, url = server
    import cv2

    config = json.loads(_http(url + "/api/config")[1])
    assert [m["id"] for m in config["mouths"]] == ["audio", "webcam", "blend"]
    camera = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    res = _client(url, speech_wave, 5.0, pose="webcam", camera=camera, extra={"mouth": "webcam"})
    _wait_idle(srv)
    assert res.status == 200 and res.error is None, res.error
    assert res.messages[0]["type"] == "ready" and res.messages[0]["mouth"] == "webcam"
    st = res.stats
    assert st is not None and st["mouth"] == "webcam"
    assert st["mouth_camera_frames"] > 0.5 * st["frames"] > 25, st
    k = np.round((np.asarray(res.frame_pts) - res.frame_pts[0]) * FPS / 90000).astype(int)
    mouth = np.asarray(res.mouth)[k > FPS]  # after the first second (the camera's first frames)
    # the mouth box's luma: std 7.6 when the voice drives it, 0.46 here (measured on this machine)
    assert np.std(mouth) < 2.0, np.std(mouth)


def test_upload_reads_the_whole_photo_and_bounds_its_size(server) -> None:
    """A photo bigger than one network read arrives whole (a cut JPEG decodes with a grey
    bottom, a cut PNG not at all); one over `MAX_PHOTO_SIDE` (paste-back streams it every frame)
    or with an odd side is kept downscaled to even sides."""
    import cv2

    from trtalk.serve.app import MAX_PHOTO_SIDE

    srv, url = server
    face = cv2.imread(str(ASTRONAUT))
    for (w, h), quality in (((600, 601), 95), ((1501, 1300), 40)):
        photo = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)
        ok, jpg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert 100_000 < len(jpg) < 200_000, len(jpg)  # several reads, under the fixture's limit
        code, body, _ = _http(url + "/api/avatar", "POST", jpg.tobytes())
        assert code == 200, body
        image = srv.avatars[json.loads(body)["id"]].image
        scale = min(1.0, MAX_PHOTO_SIDE / max(w, h))
        assert image.shape == (int(h * scale) // 2 * 2, int(w * scale) // 2 * 2, 3)
        want = cv2.cvtColor(cv2.resize(cv2.imdecode(jpg, cv2.IMREAD_COLOR), image.shape[1::-1],
                                       interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        assert np.abs(image[-40:].astype(int) - want[-40:].astype(int)).mean() < 1.0  # the bottom too


def test_motion_style_upload_and_choice(server) -> None:
    """``POST /api/motion-style``: a valid style file is kept and listed, a bad one is a one-line
    422, one over the size limit a 413; an offer naming an unknown style is refused, a known one
    passes that check."""
    from trtalk.motion.style import MAX_BYTES, MotionStyle, dumps_style

    srv, url = server
    style = MotionStyle(name="me", sway=(9.0, 2.0, 1.0))
    code, body, _ = _http(url + "/api/motion-style", "POST", dumps_style(style).encode())
    assert code == 200, body
    key = json.loads(body)["id"]
    assert srv.styles[key] == style
    code, body, _ = _http(url + "/api/config")
    listed = {s["id"]: s["label"] for s in json.loads(body)["motion_styles"]}
    assert listed[key] == "uploaded: me" and "default" in listed
    code, body, _ = _http(url + "/api/motion-style", "POST", b'{"format": "trtalk-motion-style", "version": 1, '
                                                                b'"sway": [1, 2, 1e999]}')
    err = json.loads(body)["error"]
    assert code == 422 and "sway" in err and "\n" not in err, (code, err)
    code, body, _ = _http(url + "/api/motion-style", "POST", b" " * (MAX_BYTES + 1))
    assert code == 413, body
    avatar = next(iter(srv.builtin))
    offer = {"avatar": avatar, "pose": "auto", "sdp": "x", "type": "nope"}
    code, body, _ = _http(url + "/api/offer", "POST", json.dumps({**offer, "motion_style": "style-unknown"}).encode(),
                          {"Content-Type": "application/json"})
    assert code == 400 and "unknown motion style" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/offer", "POST", json.dumps({**offer, "motion_style": key}).encode(),
                          {"Content-Type": "application/json"})
    assert code == 400 and "createOffer" in json.loads(body)["error"]  # past the style check
    assert not srv.sessions


def test_other_sites_cannot_drive_a_tokenless_server(server, speech_wave) -> None:
    """Without a token the server is on loopback, but any page the user opens can make the
    browser post to it, or reach it by DNS rebinding: requests addressed to another name, posts
    from another origin and offers that are not JSON are refused, and nothing changes."""
    srv, url = server
    code, body, _ = _http(url + "/api/drain", "POST", b"", {"Origin": "https://evil.example"})
    assert code == 403 and "cross-site" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/config", headers={"Host": "evil.example"})
    assert code == 403 and "loopback names" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/offer", "POST", b'{"sdp": "x", "type": "offer"}',
                          {"Content-Type": "text/plain"})
    assert code == 415 and "application/json" in json.loads(body)["error"]
    assert not srv.draining and not srv.sessions
    port = url.rsplit(":", 1)[1]
    code, _, _ = _http(url + "/api/config", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert code == 200
    code, _, _ = _http(url + "/api/config", headers={"Host": f"localhost:{port}"})
    assert code == 200


def _raw(url: str, data: bytes, timeout: float = 15.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; (everything answered until the server closes, seconds)."""
    import socket

    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    t = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out, time.monotonic() - t


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def test_hostile_requests_get_a_4xx_and_one_line(server, caplog) -> None:
    """Issue 24, 5: what used to answer 500 with a traceback (a JSON offer nested 100 000 deep,
    an unknown charset, ``Host: localhost:abc``) or log aiohttp's ERROR traceback (a malformed
    Content-Length) is a 4xx with a short reason and no traceback; ``"paste_back": "false"`` is
    refused, not read as true."""
    import logging

    srv, url = server
    caplog.set_level(logging.INFO)
    offer = url + "/api/offer"
    code, body, _ = _http(offer, "POST", b"[" * 100_000, {"Content-Type": "application/json"})
    assert code == 400 and "nested deeper" in json.loads(body)["error"]
    code, body, _ = _http(offer, "POST", b"{}", {"Content-Type": "application/json; charset=foo"})
    assert code == 415 and "UTF-8" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/config", headers={"Host": "localhost:abc"})
    assert code == 400 and "Host" in json.loads(body)["error"]
    code, body, _ = _http(offer, "POST", json.dumps({"sdp": "v=0", "type": "offer", "avatar": "astronaut",
                                                       "paste_back": "false"}).encode(),
                          {"Content-Type": "application/json"})
    assert code == 400 and "paste_back must be true or false" in json.loads(body)["error"]
    for length in (b"-1", b"abc", b"1e3"):
        answer, _ = _raw(url, b"POST /api/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + length
                         + b"\r\n\r\n")
        assert _status(answer) == 400, answer[:200]
    answer, _ = _raw(url, b"POST /api/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n")
    assert _status(answer) == 413
    import socket

    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    for path in ("/api/avatar", "/api/offer"):  # a client that leaves mid-body: aiohttp logged ERROR
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 1000\r\n\r\n0123456789".encode())
            time.sleep(0.3)
    time.sleep(0.5)
    assert not srv.sessions
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud]


def test_slow_clients_hold_no_upload_slot(server) -> None:
    """Issue 24, 7: two uploads trickling a byte a second (the report: one every 15 s, with the
    30 s body timeout shortened to 2 s here) took both upload slots, and every other upload got
    429. Now a body is read before a slot is taken, and one that is too slow is a 408; a
    connection that never finishes its headers is closed after the header timeout (3 s here)."""
    import cv2

    srv, url = server
    photo = cv2.resize(cv2.imread(str(ASTRONAUT)), (256, 256))
    jpg = cv2.imencode(".jpg", photo)[1].tobytes()
    srv.limits.body_timeout_s = 2.0
    answers: list[tuple[bytes, float]] = []

    def trickle() -> None:
        import socket

        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
        t = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(b"POST /api/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
            out = b""
            try:
                for _ in range(20):
                    sock.sendall(b"x")
                    time.sleep(0.5)
            except OSError:  # the server answered and closed
                pass
            while chunk := sock.recv(65536):
                out += chunk
        answers.append((out, time.monotonic() - t))

    try:
        slow = [threading.Thread(target=trickle) for _ in range(2)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        codes = [_http(url + "/api/avatar", "POST", jpg)[0] for _ in range(3)]
        assert codes == [200, 200, 200], codes
        for t in slow:
            t.join(30)
    finally:
        srv.limits.body_timeout_s = 30.0
    assert [_status(a) for a, _ in answers] == [408, 408], answers
    assert all(s < 6 for _, s in answers), answers
    answer, seconds = _raw(url, b"GET /api/con")  # headers never finished
    assert answer == b"" and 2.5 < seconds < 8, (answer, seconds)


def test_connections_over_the_cap_get_a_quick_503(server) -> None:
    """Issue 24: serve had no limit on open connections (each could hold a body of up to
    --max-upload-mb until the body timeout). Over ``--max-connections`` (4 here), a new connection
    gets a 503 at once, unread; once the held ones close, requests are answered again."""
    import socket

    srv, url = server
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    srv.limits.max_connections = 4
    held = []
    try:
        for _ in range(4):  # four clients sending their headers slowly
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /api/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(sock)
        time.sleep(0.3)
        answer, seconds = _raw(url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _status(answer) == 503 and b"too many connections" in answer, answer
        assert seconds < 3, seconds  # at once (the 1 s linger at most), not after a timeout
    finally:
        for sock in held:
            sock.close()
        srv.limits.max_connections = 64
    for _ in range(50):  # the held connections are gone once the server has seen them close
        code = _http(url + "/healthz")[0]
        if code == 200:
            break
        time.sleep(0.1)
    assert code == 200


def test_simultaneous_offers_never_overfill_the_server(server, speech_wave) -> None:
    """Four offers at once against room for two: a slot is held from admission on, so exactly
    two start and two are refused."""
    srv, url = server
    res = _many(url, [(speech_wave, 1.5, {}) for _ in range(4)])
    _wait_idle(srv)
    assert sorted(r.status for r in res) == [200, 200, 503, 503], [(r.status, r.error) for r in res]


def test_vanished_browser_is_cleaned_up(server, speech_wave) -> None:
    srv, url = server
    # no bye, no DTLS close: the client's event loop just ends (its tasks are cancelled)
    res = _client(url, speech_wave, 1.0, vanish=True)
    assert res.status == 200 and len(res.frame_times) > 5
    _wait_idle(srv, timeout=8.0)  # the stall timeout (1.5 s) ends it
    assert srv.metrics.per_session == {}
    assert srv.scheduler.pending() == 0


def test_bad_requests(server, speech_wave) -> None:
    srv, url = server
    code, body, _ = _http(url + "/api/avatar", "POST", b"not an image at all")
    assert code == 415 and "not an image" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/avatar", "POST", b"\0" * 300_000)
    assert code == 413 and "over" in json.loads(body)["error"]
    code, body, _ = _http(url + "/api/avatar", "POST", _png_header(50_000, 50_000))
    assert code == 413 and "megapixels" in json.loads(body)["error"]
    import cv2

    ok, png = cv2.imencode(".png", np.full((96, 96, 3), 128, np.uint8))
    code, body, _ = _http(url + "/api/avatar", "POST", png.tobytes())
    assert code == 422 and "no face" in json.loads(body)["error"]
    photo = cv2.resize(cv2.imread(str(ASTRONAUT)), (256, 256))
    ok, jpg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 80])
    code, body, _ = _http(url + "/api/avatar", "POST", jpg.tobytes())
    key = json.loads(body)["id"]
    assert code == 200 and key.startswith("upload-") and srv.avatars[key].crop.shape == (256, 256, 3)
    res = _client(url, speech_wave, 0.1, avatar="nobody")
    assert res.status == 404 and "unknown avatar" in res.error
    res = _client(url, speech_wave, 0.1, pose="dance")
    assert res.status == 400 and "unknown pose source 'dance'" in res.error
    res = _client(url, speech_wave, 0.1, extra={"mouth": "teeth"})
    assert res.status == 400 and "unknown lip source 'teeth'" in res.error
    res = _client(url, speech_wave, 0.1, extra={"mouth": "webcam"})  # still pose: no camera frames
    assert res.status == 400 and "pick the webcam pose" in res.error
    code, body, _ = _http(url + "/api/offer", "POST", b"{", {"Content-Type": "application/json"})
    assert code == 400
    assert not srv.sessions


def test_pdfgc_sessions_run_with_their_own_factors(pdfgc_model, speech_wave) -> None:
    """A PD-FGC server (small seeded networks: a few frames/s on this CPU, so frames past their
    deadline are held): two sessions at once each get frames; every session has its own state
    (`PDFGCFamily.new_state`) in the one shared family; the page offers only the voice for the lips."""
    from trtalk.families.pdfgc.runtime import PDFGCFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server
    from trtalk.serve.cli import run_in_thread

    root = PDFGCFamily(pdfgc_model, random_weights=True)
    srv = Server(root, PipelineConfig(fps=FPS), capacity_fps_override=100.0)
    srv.prepare()
    states = []
    new_state = root.new_state
    root.new_state = lambda: states.append(new_state()) or states[-1]
    url, stop = run_in_thread(srv)
    try:
        config = json.loads(_http(url + "/api/config")[1])
        assert [m["id"] for m in config["mouths"]] == ["audio"]
        res = _many(url, [(speech_wave, 4.0, {}), (speech_wave, 4.0, {})])
        _wait_idle(srv)
    finally:
        stop()
    for r in res:
        assert r.status == 200 and r.error is None, r.error
        assert len(r.frame_times) >= 3 and r.stats is not None and r.stats["frames"] > 0
    # the two sessions' states (the warm-up's was made before the spy)
    assert len(states) == 2 and states[0] is not states[1] and states[0].controls is not states[1].controls
    assert srv.scheduler.family is root


def test_token_is_checked_everywhere(speech_wave, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO)
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server
    from trtalk.serve.cli import run_in_thread

    srv = Server(WarpFamily(FPS), PipelineConfig(), token="s3cret-token", capacity_fps_override=100.0)
    srv.builtin = {}
    srv.prepare()
    url, stop = run_in_thread(srv)
    try:
        for path in ("/", "/api/config", "/metrics", "/healthz", "/static/app.js"):
            assert _http(url + path)[0] == 401, path
            assert _http(url + path + "?token=wrong-token")[0] == 401, path
        assert _http(url + "/api/config", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        code, _, headers = _http(url + "/?token=s3cret-token")
        assert code == 200 and "trtalk_token=s3cret-token" in headers.get("Set-Cookie", "")
        assert _http(url + "/static/app.js", headers={"Cookie": "trtalk_token=s3cret-token"})[0] == 200
        assert _http(url + "/api/offer", "POST", b"{}")[0] == 401
    finally:
        stop()
        srv.scheduler.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "token=***" in logged and "s3cret-token" not in logged  # issue 24: tokens stay out of logs


def test_serve_refuses_a_public_host_without_token() -> None:
    from trtalk.serve.cli import ServeCommand, resolve_token

    with pytest.raises(TrtalkError, match="--host 0.0.0.0 exposes the server .* --token"):
        resolve_token(ServeCommand(host="0.0.0.0"))
    assert resolve_token(ServeCommand(host="0.0.0.0", token="long-enough")) == "long-enough"
    assert resolve_token(ServeCommand()) is None
    for host in ("localhost", "127.0.0.2", "::1", "[::1]"):
        assert resolve_token(ServeCommand(host=host)) is None, host
    for host in ("::", "192.168.1.20", "example.org", "localhost.example.org"):
        with pytest.raises(TrtalkError, match="--token"):
            resolve_token(ServeCommand(host=host))
    from trtalk.net import url_host

    assert [url_host(h) for h in ("0.0.0.0", "::", "::1", "localhost", "10.0.0.5")] == [
        "127.0.0.1", "127.0.0.1", "[::1]", "localhost", "10.0.0.5"]


def test_returned_audio_waits_for_its_video() -> None:
    """The microphone audio goes back only once the frame showing it was sent, so sound and
    mouth stay together however far the audio path runs ahead (the 120 ms lookahead and more)."""
    from trtalk.serve.session import TrackSink

    sink = TrackSink(FPS)
    sink.write_audio(np.arange(16000, dtype=np.float32))  # 1 s of audio, before any frame
    assert sink.read_audio(320) is None
    sink.write(np.zeros((4, 4, 3), np.uint8), 0.0)  # frame 0 covers audio [0, 640)
    a = sink.read_audio(320)
    b = sink.read_audio(320)
    assert a is not None and b is not None and a[0] == 0 and b[0] == 320
    assert sink.read_audio(320) is None  # [640, 960) belongs to frame 1, not sent yet
    sink.write(np.zeros((4, 4, 3), np.uint8), 10 / FPS)  # frames 1-9 dropped: frame 10 sent
    # audio more than 0.3 s behind the video skips ahead to stay within 0.3 s of it
    c = sink.read_audio(320)
    assert c is not None and 640 < c[0] and (11 * 640 - (c[0] + 320)) <= 0.3 * 16000
    assert sink.next_frame()[0] == 0 and sink.next_frame()[0] == 10 and sink.next_frame() is None


def test_trtalk_serve_command_ends_sessions_on_sigterm(speech_wave) -> None:
    """The command itself: it serves, and SIGTERM ends the running session with a message for its
    page and exits 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from trtalk.serve.client import run_client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "trtalk.cli", "-q", "serve", "--port", str(port),
                             "--capacity-fps", "100"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _http_ok(url + "/healthz") is False:
            assert proc.poll() is None and time.monotonic() < deadline, "trtalk serve did not start"
            time.sleep(0.3)

        async def session_then_sigterm():
            task = asyncio.ensure_future(run_client(url, speech_wave, 30.0))
            await asyncio.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            return await task

        res = asyncio.run(session_then_sigterm())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res.status == 200 and len(res.frame_times) > 25
    assert res.error == "the server is shutting down"


def _http_ok(url: str) -> bool:
    try:
        return _http(url)[0] == 200
    except OSError:
        return False


def test_paste_back_goes_into_the_avatar_photo_never_the_camera_frame() -> None:
    """A session with the webcam pose and paste-back pastes the generated face into the avatar's
    photo: even a camera sample that carries its full frame and crop map is not the background,
    and the frame sent is the photo's size with the photo outside the face."""
    import cv2

    from trtalk.families.pcavs import PCAVS, PCAVSConfig
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.runtime.pose_path import PoseSample
    from trtalk.serve.session import Session

    family = PCAVSFamily(PCAVS.random(seed=3, config=PCAVSConfig.small()), random_weights=True)
    photo = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    avatar = family.make_avatar(photo, "astronaut")
    session = Session("s1", PipelineConfig(fps=FPS, paste_back=True), family, avatar, BatchScheduler(family),
                      "webcam")
    camera = np.zeros((480, 640, 3), np.uint8)  # the user's own camera frame: pure green
    camera[..., 1] = 255
    sample = PoseSample(0.0, 0.0, 0, True, avatar.crop, avatar.crop_m, camera, avatar.state["mesh"])
    assert session.pipeline.background(0, sample) is None  # None: the avatar's photo
    crop = np.full((224, 224, 3), 200, np.uint8)
    out = session.pipeline.step.compose(crop, session.pipeline.background(0, sample))
    assert out.shape[:2] == photo.shape[:2] != camera.shape[:2]
    changed = np.abs(out.astype(int) - photo.astype(int)).max(axis=2) > 0
    assert 0 < changed.mean() < 0.1  # the face only, into the photo
    assert not ((out[..., 1] > 250) & (out[..., 0] < 5)).any()  # nothing of the camera frame


MEMORY_SERVER = r"""
import sys
from trtalk.families.warp.runtime import WarpFamily
from trtalk.runtime.pipeline import PipelineConfig
from trtalk.serve.app import Server, ServerLimits
from trtalk.serve.cli import run_in_thread

srv = Server(WarpFamily(25.0), PipelineConfig(fps=25.0), limits=ServerLimits(stall_timeout_s=3.0),
             capacity_fps_override=60)
srv.prepare()
url, stop = run_in_thread(srv)
print(url, flush=True)
sys.stdin.read()
stop()
"""


@pytest.mark.slow  # ten 3 s camera sessions: 41 s
@pytest.mark.solo  # alone: beside another worker one CI run read 589 -> 635 MB (27 MB apart); alone 10-18
def test_camera_sessions_give_their_memory_back(speech_wave, tmp_path) -> None:
    """Issue 24, 8: the server's memory grew with every camera session (1920x1080: +228 MB a
    session) and never came back. Ten sessions of a 640x360 camera (webcam pose, blended lips,
    paste-back, 3 s each) against a server in its own process, RSS read once each session has
    closed: the median of sessions 8-10 must be within 25 MB of the median of sessions 3-5 (the
    first two load the face tracker and the codecs once).

    The cause was reference cycles (aiortc's peer connection with its decoders and decoded camera
    frames; the session's pipeline) that only a full garbage collection frees, which a server
    holding a model seldom runs; `trtalk.serve.app.collect_session_garbage` now runs one as each
    session ends. Measured on 2 loaded cores: before, 472, 488, 502, ... 579 MB (+12 MB a session:
    the medians 55 MB apart); after, 464, 477, 475, 478, 480, 487, 485, 483, 489, 491 MB and
    460, 461, 479, 480, 481, 481, 483, 488, 485, 488 MB (medians 11 and 8 MB apart; 20 sessions:
    456 -> 493 MB, levelling off, allocator noise). 25 MB: a leak of 5 MB a session fails it."""
    import subprocess
    import sys

    import cv2
    import psutil

    from trtalk.serve.client import run_client

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "server.py"
    script.write_text(MEMORY_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=root,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)})
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        server = psutil.Process(proc.pid)
        camera = cv2.resize(cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB), (640, 360))
        rss = []
        for _ in range(10):
            res = asyncio.run(run_client(url, speech_wave, 3.0, pose="webcam", camera=camera,
                                         extra={"mouth": "blend", "paste_back": True}))
            assert res.status == 200 and res.error is None, res.error
            for _ in range(50):  # until the session is gone
                health = json.loads(_http(url + "/healthz")[1])
                if health["sessions"] == 0 and health["closing"] == 0:  # closed, its garbage collected
                    break
                time.sleep(0.2)
            rss.append(server.memory_info().rss / 2 ** 20)
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert np.median(rss[7:]) - np.median(rss[2:5]) < 25, [round(r) for r in rss]
