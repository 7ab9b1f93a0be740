"""`trtalk livekit-worker`: the avatar end of LiveKit's avatar dispatch, on the trtalk engine.

A LiveKit Agents worker (`AgentServer`) that registers the agent name ``trtalk-avatar`` with a
LiveKit server. An agent that starts `trtalk.integrations.livekit.TrtalkAvatarSession` asks LiveKit
to dispatch that name into its room; LiveKit hands the job to the least-loaded worker. The job joins
the room as the avatar (publishing on behalf of the agent), receives the agent's audio over a data
stream and publishes the face and the audio through LiveKit's `AvatarRunner`.

Jobs run as threads of this one process, so every avatar on the machine shares one model and one
batch scheduler; the worker reports its load as avatars / ``--max-avatars`` and LiveKit stops
sending it more at ``--load-threshold``: start one worker per GPU machine and LiveKit spreads the
avatars over them. livekit-agents is imported only when the command runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_command, option
from trtalk.errors import TrtalkError
from trtalk.runtime.options import ModelOptions

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class LivekitWorkerCommand:
    """`trtalk livekit-worker`: the LiveKit server, the avatar and the model."""

    face: Path = option(ASSETS / "astronaut.png", help="photo of the face to animate",
                        default_text="the built-in astronaut")
    url: str | None = option(None, help="LiveKit server URL", default_text="$LIVEKIT_URL")
    api_key: str | None = option(None, help="LiveKit API key", default_text="$LIVEKIT_API_KEY")
    api_secret: str | None = option(None, help="LiveKit API secret", default_text="$LIVEKIT_API_SECRET")
    agent_name: str = option("trtalk-avatar", help="the agent name jobs are dispatched to "
                                                  "(TrtalkAvatarSession's agent_name)")
    max_avatars: int = option(8, bounds=(1, 256), help="avatars this process serves at most (its load is "
                                                       "avatars / max-avatars)")
    load_threshold: float = option(0.99, bounds=(0.01, 1.0),
                                   help="load at which LiveKit stops dispatching to this worker")
    fps: float = option(25.0, bounds=(1, 60), help="output frame rate")
    sample_rate: int = option(24000, bounds=(8000, 48000), help="audio rate the avatar publishes")
    size: int | None = option(None, metavar="PX", bounds=(32, 4096), help="frame size (as trtalk stream's --size)")
    model: ModelOptions = option(default_factory=ModelOptions, prefix="")


def register(sub) -> None:
    add_command(sub, "livekit-worker", LivekitWorkerCommand, _run,
                help="avatar worker for LiveKit Agents: LiveKit dispatches avatars to it (many per GPU)",
                description="Register with a LiveKit server as the agent `trtalk-avatar`; each job joins "
                            "its room as the avatar of the agent that dispatched it (an agent using "
                            "trtalk.integrations.livekit.TrtalkAvatarSession) and publishes the face "
                            "and the agent's audio. Needs livekit-agents (pip install -r requirements-agents.txt).",
                basic=("--face", "--url", "--api-key", "--api-secret", "--agent-name", "--max-avatars",
                       "--checkpoint", "--model", "--device"),
                examples=(("trtalk livekit-worker --face me.jpg",
                           "the warp avatar for $LIVEKIT_URL (key and secret from $LIVEKIT_API_KEY/SECRET)"),
                          ("trtalk livekit-worker --checkpoint pcavs.safetensors --device cuda --max-avatars 16",
                           "PC-AVS on a GPU, up to 16 avatars in this process")))


class AvatarJobs:
    """The avatars this process runs: the worker's load, and one job's life."""

    def __init__(self, cmd: LivekitWorkerCommand) -> None:
        self.cmd = cmd
        self.active = 0

    def load(self) -> float:
        return min(1.0, self.active / self.cmd.max_avatars)

    async def entrypoint(self, ctx) -> None:  # ctx: livekit.agents.JobContext
        """One job: join as the avatar the metadata names, run the generator until the agent leaves."""
        from livekit import rtc
        from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioReceiver

        from trtalk.integrations.livekit import AvatarRequest, TrtalkVideoGenerator, avatar_token

        cmd = self.cmd
        request = AvatarRequest.from_json(ctx.job.metadata)
        token = avatar_token(cmd.api_key or "", cmd.api_secret or "", ctx.job.room.name, request)
        self.active += 1
        room = rtc.Room()
        gen = TrtalkVideoGenerator(cmd.face, fps=cmd.fps, sample_rate=cmd.sample_rate, size=cmd.size,
                                   **_model_kwargs(cmd.model))
        runner = None
        try:
            await gen.start()
            await room.connect(cmd.url or "", token)
            avatar_runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=request.agent_identity),
                                         video_gen=gen, options=gen.avatar_options())
            await avatar_runner.start()
            runner = avatar_runner  # (AvatarRunner.aclose fails on a runner whose start failed)
            gone = asyncio.Event()
            room.on("participant_disconnected",
                    lambda p: p.identity == request.agent_identity and gone.set())
            room.on("disconnected", lambda *_: gone.set())
            await gone.wait()
        finally:
            self.active -= 1
            if runner is not None:
                await runner.aclose()
            await gen.aclose()
            await room.disconnect()


def _model_kwargs(model: ModelOptions) -> dict:
    from dataclasses import asdict

    kw = {k: v for k, v in asdict(model).items() if v is not None}
    return kw


def build_server(cmd: LivekitWorkerCommand, jobs: AvatarJobs):
    """The LiveKit `AgentServer`: jobs as threads (one shared scheduler), load = avatars / max."""
    from livekit.agents import AgentServer
    from livekit.agents.job import JobExecutorType

    server = AgentServer(job_executor_type=JobExecutorType.THREAD, load_fnc=jobs.load,
                         load_threshold=cmd.load_threshold, ws_url=cmd.url, api_key=cmd.api_key,
                         api_secret=cmd.api_secret, port=0)
    server.rtc_session(jobs.entrypoint, agent_name=cmd.agent_name)
    return server


def _resolve(cmd: LivekitWorkerCommand) -> LivekitWorkerCommand:
    cmd.url = cmd.url or os.environ.get("LIVEKIT_URL")
    cmd.api_key = cmd.api_key or os.environ.get("LIVEKIT_API_KEY")
    cmd.api_secret = cmd.api_secret or os.environ.get("LIVEKIT_API_SECRET")
    missing = [n for n, v in (("--url", cmd.url), ("--api-key", cmd.api_key), ("--api-secret", cmd.api_secret))
               if not v]
    if missing:
        raise TrtalkError(f"{', '.join(missing)} missing: give them or set LIVEKIT_URL, LIVEKIT_API_KEY and "
                          f"LIVEKIT_API_SECRET")
    if not Path(cmd.face).is_file():
        raise TrtalkError(f"--face {cmd.face} does not exist; give a portrait photo")
    return cmd


def _run(cmd: LivekitWorkerCommand) -> int:
    try:
        import livekit.agents  # noqa: F401
    except ImportError:
        raise TrtalkError("trtalk livekit-worker needs LiveKit Agents: pip install -r requirements-agents.txt (pinned pipecat-ai and livekit-agents; README: voice agents)") from None
    cmd = _resolve(cmd)
    jobs = AvatarJobs(cmd)
    server = build_server(cmd, jobs)
    log.info("registering %r with %s (at most %d avatars here)", cmd.agent_name, cmd.url, cmd.max_avatars)
    asyncio.run(server.run())
    return 0
