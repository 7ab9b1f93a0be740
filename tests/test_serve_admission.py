"""Admission from measurement (issue 23): the room is what the measured per-frame cost allows,
refreshed as the server runs. Cost models are injected; nothing here is timed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from trtalk.serve.capacity import Admission, FixedCost, MeasuredCost

FPS = 25.0


class FakeClocks:
    """Process CPU seconds and wall seconds, advanced by the test."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def run(self, wall_s: float, cpu_rate: float) -> None:
        self.wall += wall_s
        self.cpu += wall_s * cpu_rate


def test_sessions_fit_by_cpu_cost_and_model_rate() -> None:
    # 40 ms of CPU a frame on 1.6 usable cores: 40 frames/s, 36 with 0.9 headroom: one session
    adm = Admission(FixedCost(0.040, rate=1.6), FPS, headroom=0.9, max_sessions=8)
    assert adm.frames_per_s() == pytest.approx(40.0)
    assert adm.sessions() == 1 and adm.admits(0) and not adm.admits(1)
    # cheaper frames: 10 ms -> 160 frames/s -> 144 -> five sessions
    adm = Admission(FixedCost(0.010, rate=1.6), FPS, headroom=0.9, max_sessions=8)
    assert adm.sessions() == 5 and adm.admits(4) and not adm.admits(5)
    # the scheduler's single thread caps it whatever the cores: 60 frames/s -> two
    adm = Admission(FixedCost(0.010, rate=1.6, model=60.0), FPS, headroom=0.9, max_sessions=8)
    assert adm.frames_per_s() == 60.0 and adm.sessions() == 2
    # --max-sessions caps it; a free model (no cost known) admits up to it
    assert Admission(FixedCost(0.001, rate=16), FPS, max_sessions=3).sessions() == 3
    assert Admission(FixedCost(0.0), FPS, max_sessions=4).sessions() == 4
    # too slow for even one session: none
    assert Admission(FixedCost(0.1, rate=1.0), FPS).sessions() == 0


def test_measured_cost_follows_the_running_sessions() -> None:
    clocks = FakeClocks()
    cost = MeasuredCost(0.020, cores=1.6, alpha=0.5, cpu_clock=lambda: clocks.cpu,
                        wall_clock=lambda: clocks.wall)
    adm = Admission(cost, FPS, headroom=0.9, max_sessions=8)
    assert adm.sessions() == 2  # warm-up: 20 ms -> 80 frames/s -> 72 -> two
    # one session at 25 fps really costs 36 ms a frame (encoding, its pipeline): 0.9 cores busy
    for _ in range(8):
        clocks.run(1.0, 0.9)
        cost.observe(25, behind=False)
    assert cost.frame_cost_s() == pytest.approx(0.036, rel=0.01)
    assert adm.sessions() == 1 and not adm.admits(1)  # the second would not keep 25 fps
    # idle: no frames, no update (idle CPU is not a frame's cost)
    before = cost.frame_cost_s()
    clocks.run(5.0, 0.05)
    cost.observe(0, behind=False)
    assert cost.frame_cost_s() == before


def test_a_session_falling_behind_lowers_the_cpu_ceiling() -> None:
    clocks = FakeClocks()
    cost = MeasuredCost(0.010, cores=2.0, alpha=0.5, cpu_clock=lambda: clocks.cpu,
                        wall_clock=lambda: clocks.wall)
    adm = Admission(cost, FPS, headroom=0.9, max_sessions=8)
    # 10 ms a frame, yet 3 sessions get only 20 fps each while the process spends 0.6 CPU s/s
    # (the rest went elsewhere: the interpreter lock, other processes)
    clocks.run(1.0, 0.6)
    cost.observe(60, behind=True)
    assert cost.cpu_rate() == pytest.approx(0.6)
    assert adm.frames_per_s() == pytest.approx(60.0) and adm.sessions() == 2
    # everyone keeps up again: the ceiling recovers slowly, never past the start
    for _ in range(200):
        clocks.run(1.0, 0.5)
        cost.observe(50, behind=False)
    assert cost.cpu_rate() == pytest.approx(2.0)


def test_server_admits_by_its_cost_model_and_shows_the_room() -> None:
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server, ServerLimits

    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS), limits=ServerLimits(max_sessions=8), warmup=False)
    srv.set_cost(FixedCost(0.030, rate=1.8))  # 60 frames/s, 54 with headroom: two sessions
    assert srv.capacity_sessions() == 2 and srv.room() == 2 and srv.admit() is None
    srv._starting, srv._admitted_at = 1, srv._cost_samples()  # one being built: a fixed cost
    assert srv.admit() is None and srv.room() == 1                # needs no settling
    srv._starting = 0
    assert srv.capacity.frames_per_s == pytest.approx(60.0)
    fake = SimpleNamespace(sink=SimpleNamespace(frames_written=0), recent_fps=None,
                           pipeline=SimpleNamespace(latency=SimpleNamespace(drops={})))
    srv.sessions = {"a": fake, "b": fake}  # type: ignore[assignment]
    assert srv.room() == 0
    refusal = srv.admit()
    assert refusal is not None and "the server is full" in refusal and "2 session(s) at 25 fps" in refusal
    text = srv.metrics.render(srv)
    assert "trtalk_sessions_room 0.0" in text and "trtalk_sessions_capacity 2.0" in text
    assert "trtalk_frame_cost_seconds 0.03" in text


def test_server_refreshes_its_measured_cost_from_the_sessions_frames() -> None:
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server

    clocks = FakeClocks()
    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS), warmup=False)
    cost = MeasuredCost(0.010, cores=1.8, alpha=1.0, cpu_clock=lambda: clocks.cpu,
                        wall_clock=lambda: clocks.wall)
    srv.set_cost(cost)
    assert srv.capacity_sessions() == 6  # 180 frames/s * 0.9 / 25
    sink = SimpleNamespace(frames_written=0)
    srv.sessions = {"a": SimpleNamespace(sink=sink, recent_fps=25.0)}  # type: ignore[assignment]
    srv.observe_load()
    sink.frames_written = 25
    clocks.run(1.0, 1.0)  # one session's 25 frames took a whole core: 40 ms each
    srv.observe_load()
    assert cost.frame_cost_s() == pytest.approx(0.040)
    assert srv.capacity.frames_per_s == pytest.approx(45.0) and srv.capacity_sessions() == 1
    assert srv.admit() is not None  # the second session would not keep its rate


def test_capacity_override_is_a_fixed_cost() -> None:
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server

    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS), capacity_fps_override=2 * FPS / 0.9 + 1)
    srv.set_cost(FixedCost(1.0 / srv._capacity_override))  # what prepare() does with the flag
    assert srv.capacity_sessions() == 2 and math.isclose(srv.capacity.frames_per_s, 2 * FPS / 0.9 + 1)


def test_the_next_session_waits_until_the_newest_is_measured() -> None:
    """A burst of offers cannot overfill the server on the warm-up's figure: after an admission
    the next one waits for the cost model to be refreshed with that session running."""
    from trtalk.families.warp.runtime import WarpFamily
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import SETTLE_SAMPLES, Server

    clocks = FakeClocks()
    srv = Server(WarpFamily(FPS), PipelineConfig(fps=FPS), warmup=False)
    cost = MeasuredCost(0.005, cores=2.0, alpha=0.5, cpu_clock=lambda: clocks.cpu,
                        wall_clock=lambda: clocks.wall)
    srv.set_cost(cost)
    assert srv.admit() is None  # the first: on the warm-up's figure
    srv._starting, srv._admitted_at = 1, cost.samples  # as the offer handler does
    refusal = srv.admit()
    assert refusal is not None and "measuring the load" in refusal
    sink = SimpleNamespace(frames_written=0)
    srv._starting = 0
    srv.sessions = {"a": SimpleNamespace(sink=sink, recent_fps=25.0)}  # type: ignore[assignment]
    for _ in range(SETTLE_SAMPLES):
        sink.frames_written += 25
        clocks.run(1.0, 0.25)  # 10 ms a frame: plenty of room
        srv.observe_load()
    assert srv.admit() is None
