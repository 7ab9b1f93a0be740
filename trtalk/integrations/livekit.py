"""LiveKit Agents: `TrtalkVideoGenerator` for LiveKit's `AvatarRunner`, and the two ends of an
avatar dispatched by LiveKit itself.

- `TrtalkVideoGenerator` is a ``livekit.agents.voice.avatar.VideoGenerator``: `push_audio` takes
  the agent's ``rtc.AudioFrame``s (any rate) and ``AudioSegmentEnd``; iterating it yields, per
  frame, an ``rtc.VideoFrame`` and -- while the agent speaks -- the ``rtc.AudioFrame`` of that
  frame's slot, then ``AudioSegmentEnd`` once a segment's last sample is out; `clear_buffer`
  drops the queued speech (`trtalk.integrations.face.AgentFace.interrupt`). Between segments
  video frames keep coming (the face stays alive). `AvatarRunner`'s AV synchronizer paces them.
- `TrtalkAvatarSession` (agent side) asks LiveKit to dispatch the ``trtalk-avatar`` agent into the
  room (explicit agent dispatch) and routes the agent's audio to it over a data stream, as LiveKit's
  avatar plugins do. `trtalk livekit-worker` (`trtalk.integrations.livekit_worker`) is that agent:
  a LiveKit worker whose jobs join the room as the avatar, publish on behalf of the agent and run
  an `AvatarRunner` with this generator. Its jobs run as threads of one process, so every avatar
  on a machine shares one batch scheduler, and it reports its load (avatars / ``max_avatars``) so
  LiveKit's dispatcher sends further avatars to other machines.

Needs livekit-agents: ``pip install -r requirements-agents.txt`` (README: voice agents).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    from livekit import api, rtc
    from livekit.agents.voice.avatar import (AudioSegmentEnd, AvatarOptions, AvatarSession, DataStreamAudioOutput,
                                             VideoGenerator)
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(f"trtalk.integrations.livekit needs LiveKit Agents ({exc}): pip install -r requirements-agents.txt (pinned pipecat-ai and livekit-agents; README: voice agents)") from exc

from trtalk.errors import TrtalkError
from trtalk.integrations.face import AgentFace, FaceOutput

log = logging.getLogger(__name__)

#: the agent name `trtalk livekit-worker` registers and `TrtalkAvatarSession` dispatches
AGENT_NAME = "trtalk-avatar"
#: participant attribute: the agent whose media the avatar publishes (LiveKit's
#: ``livekit.agents.voice.room_io.ATTRIBUTE_PUBLISH_ON_BEHALF``)
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"

_STOP = object()


class TrtalkVideoGenerator(VideoGenerator):
    """A LiveKit ``VideoGenerator`` on the trtalk engine (see the module docstring).

    Arguments as `AgentFace`'s (``avatar`` the photo, ``model``, ``checkpoint``, ``fps``,
    ``backend``, ``device``, ``pose``, ``size``, ``controls``); ``sample_rate``: the audio it yields
    (the `AvatarOptions` audio rate). Call ``await start()`` before `avatar_options` and iteration.
    """

    def __init__(self, avatar: str | Path, model: str | None = "warp", checkpoint: str | Path | None = None,
                 fps: float = 25.0, backend: str | None = None, device: str | None = None, *,
                 sample_rate: int = 24000, pose: str = "auto", size: int | None = None, **controls: Any) -> None:
        self.face = AgentFace(avatar, model, checkpoint, fps, backend, device, pose=pose, sample_rate=sample_rate,
                              size=size, on_output=self._on_output, **controls)
        self.fps = float(fps)
        self.sample_rate = int(sample_rate)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: asyncio.Future | None = None
        self.size: tuple[int, int] | None = None  # width, height of the frames

    async def start(self, timeout: float = 120.0) -> None:
        """Load (or share) the model and start the face; returns once the first frame exists."""
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        await self._loop.run_in_executor(None, self.face.start)
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except asyncio.TimeoutError:
            raise TrtalkError(f"the avatar made no frame in {timeout:g} s: {self.face.error or 'too slow'}") from None

    def avatar_options(self, channels: int = 1) -> AvatarOptions:
        """`AvatarRunner`'s options for this generator's frames and audio (after `start`)."""
        if self.size is None:
            raise TrtalkError("TrtalkVideoGenerator.avatar_options: call await start() first")
        return AvatarOptions(video_width=self.size[0], video_height=self.size[1], video_fps=self.fps,
                             audio_sample_rate=self.sample_rate, audio_channels=channels)

    async def aclose(self) -> None:
        """Stop the face (the iteration ends)."""
        await asyncio.get_running_loop().run_in_executor(None, self.face.close)
        self._queue.put_nowait(_STOP)

    # -- VideoGenerator ------------------------------------------------------------------------

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            self.face.flush()
            return
        pcm = np.frombuffer(frame.data, np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        self.face.push_audio(pcm, frame.sample_rate)

    def clear_buffer(self) -> None:
        self.face.interrupt()
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        while True:
            out = await self._queue.get()
            if out is _STOP:
                return
            h, w = out.image.shape[:2]
            rgba = np.empty((h, w, 4), np.uint8)
            rgba[..., :3] = out.image
            rgba[..., 3] = 255
            yield rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, rgba.tobytes())
            if out.speech and len(out.audio):
                yield rtc.AudioFrame(out.audio.tobytes(), out.sample_rate, 1, len(out.audio))
            for _ in range(out.segment_ends):
                yield AudioSegmentEnd()

    # -- the face's thread ---------------------------------------------------------------------

    def _on_output(self, out: FaceOutput) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self.size is None:
            self.size = (out.image.shape[1], out.image.shape[0])
            loop.call_soon_threadsafe(lambda: self._first is not None and not self._first.done()
                                      and self._first.set_result(None))
        loop.call_soon_threadsafe(self._queue.put_nowait, out)


@dataclass
class AvatarRequest:
    """What the agent tells the avatar job (the dispatch's metadata): who to publish for and
    under which identity to join."""

    agent_identity: str
    avatar_identity: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AvatarRequest":
        try:
            data = json.loads(text or "{}")
            return cls(str(data["agent_identity"]), str(data["avatar_identity"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TrtalkError(f"the avatar job's metadata is not a trtalk avatar request: {exc}") from None


def avatar_token(api_key: str, api_secret: str, room: str, request: AvatarRequest) -> str:
    """A token for the avatar to join ``room`` as ``request.avatar_identity``, publishing on behalf
    of the agent (as LiveKit's avatar plugins' workers join)."""
    return (api.AccessToken(api_key, api_secret)
            .with_identity(request.avatar_identity)
            .with_name("trtalk avatar")
            .with_kind("agent")
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .with_attributes({PUBLISH_ON_BEHALF: request.agent_identity})
            .to_jwt())


class TrtalkAvatarSession(AvatarSession):
    """Agent side: dispatch a ``trtalk livekit-worker`` avatar into the room and send it the
    agent's audio::

        avatar = TrtalkAvatarSession()
        await avatar.start(session, room=ctx.room)
        await session.start(agent=agent, room=ctx.room)
    """

    def __init__(self, *, agent_name: str = AGENT_NAME, avatar_identity: str | None = None) -> None:
        super().__init__()
        self._agent_name = agent_name
        self._identity = avatar_identity

    @property
    def avatar_identity(self) -> str:
        return self._identity or "trtalk-avatar"

    @property
    def provider(self) -> str:
        return "trtalk"

    async def start(self, agent_session: Any, room: rtc.Room) -> None:
        from livekit.agents import get_job_context

        await super().start(agent_session, room)
        me = room.local_participant.identity
        if self._identity is None:
            self._identity = f"trtalk-avatar-{me}"
        request = AvatarRequest(me, self.avatar_identity)
        ctx = get_job_context()
        await ctx.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=self._agent_name, room=room.name, metadata=request.to_json()))
        # the agent's audio to the avatar (only the chain's last sink is swapped, as LiveKit's
        # avatar plugins do); AvatarRunner reports playback start, so wait for it
        agent_session.output.replace_audio_tail(DataStreamAudioOutput(
            room, destination_identity=self.avatar_identity, wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            wait_playback_start=True))
