"""Pipecat: `TrtalkVideoService`, a talking face placed after the TTS.

Pipecat's own video services (Simli, Tavus, HeyGen) take the TTS's `TTSAudioRawFrame`s and push
`OutputImageRawFrame`s; this one does the same on the local engine (`trtalk.integrations.face`):

    pipeline = Pipeline([transport.input(), stt, llm, tts,
                         TrtalkVideoService(avatar="me.jpg"), transport.output()])

- TTS audio of any sample rate and chunk size goes in; frames come out at ``fps`` and the same
  audio comes out with them, each frame's audio right after it, delayed by the audio lookahead
  (120 ms at 25 fps) plus the frame's compute, so sound and lips meet at the transport. Images are
  pushed with ``sync_with_audio`` so the output transport shows each one after the audio before it:
  use ``TransportParams(video_out_is_live=False, video_out_framerate=30)`` (the live path ignores
  the mark; the other sends the newest image, then sleeps 1/framerate, so at 25 it sends ~22/s).
- Between utterances the face stays alive (head motion and blinks with ``pose="auto"``, mouth
  closed); frames keep coming, only speech audio is pushed (silence would keep the transport's
  "bot speaking" state on).
- `InterruptionFrame` and `UserStartedSpeakingFrame` drop the queued speech: its sound and lips stop
  from the next frame (`AgentFace.interrupt`). `EndFrame`/`CancelFrame` stop the face and its task.
- Every service in the process that names the same model shares one model and one batch scheduler
  (`trtalk.integrations.shared`): N bots on one GPU are generated in shared batches.

Needs pipecat-ai: ``pip install -r requirements-agents.txt`` (README: voice agents).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame, OutputImageRawFrame,
                                       StartFrame, TTSAudioRawFrame, UserStartedSpeakingFrame)
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(f"trtalk.integrations.pipecat needs Pipecat ({exc}): pip install -r requirements-agents.txt (pinned pipecat-ai and livekit-agents; README: voice agents)") from exc

from trtalk.integrations.face import AgentFace, FaceOutput

log = logging.getLogger(__name__)

_STOP = object()


class TrtalkVideoService(FrameProcessor):
    """A lip-synced talking face for a Pipecat bot (see the module docstring).

    ``avatar``: the photo; ``model``: ``warp`` (no checkpoint), ``pcavs``, ``pdfgc`` or a plugin
    family; ``checkpoint``, ``backend``, ``device``: as the CLI's flags; ``fps``: the frame rate;
    ``pose``: ``auto`` or ``still``; ``size``: the frame size; ``controls``: the family's other
    options (`trtalk.runtime.options.ModelOptions` fields, e.g. ``model_config="small"``,
    ``eyes="auto"``). The output audio rate is the pipeline's ``audio_out_sample_rate``.
    """

    def __init__(self, *, avatar: str | Path, model: str | None = "warp", checkpoint: str | Path | None = None,
                 fps: float = 25.0, backend: str | None = None, device: str | None = None,
                 pose: str = "auto", size: int | None = None, name: str | None = None,
                 **controls: Any) -> None:
        super().__init__(name=name)
        self._face_kw = dict(avatar=avatar, model=model, checkpoint=checkpoint, fps=fps, backend=backend,
                             device=device, pose=pose, size=size, **controls)
        # checked now (a missing photo, an unknown model) rather than when the pipeline starts
        self.face = AgentFace(**self._face_kw, on_output=self._on_output)
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._out_rate = 24000
        self._started = False

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        rate = getattr(setup, "audio_out_sample_rate", None)
        if rate:
            self._out_rate = int(rate)

    # -- frames in -----------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, TTSAudioRawFrame):
            pcm = np.frombuffer(frame.audio, np.int16)
            if frame.num_channels > 1:
                pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
            self.face.push_audio(pcm, frame.sample_rate)
        elif isinstance(frame, (InterruptionFrame, UserStartedSpeakingFrame)):
            self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _interrupt(self) -> None:
        self.face.interrupt()
        q = self._queue
        while q is not None and not q.empty():
            q.get_nowait()

    # -- lifecycle -----------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self.face.sample_rate = self._out_rate
        await self._loop.run_in_executor(None, self.face.start)
        self._task = self.create_task(self._push_outputs())

    async def _stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self.face.close)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    async def close(self) -> None:
        """Stop the face and release the shared model now (idempotent). A pipeline that ends with
        an EndFrame or CancelFrame does this itself; call it where a pipeline may be dropped without
        one, e.g. when its runner ends early."""
        await self._stop()
        await asyncio.get_running_loop().run_in_executor(None, self.face.close)

    # -- frames out ----------------------------------------------------------------------------

    def _on_output(self, out: FaceOutput) -> None:
        """The face's frame (pipeline thread): hand it to the event loop."""
        loop, q = self._loop, self._queue
        if loop is not None and q is not None and not loop.is_closed():
            loop.call_soon_threadsafe(q.put_nowait, out)

    async def _push_outputs(self) -> None:
        assert self._queue is not None
        while True:
            out: FaceOutput = await self._queue.get()
            h, w = out.image.shape[:2]
            image = OutputImageRawFrame(image=np.ascontiguousarray(out.image).tobytes(), size=(w, h), format="RGB")
            image.sync_with_audio = True
            await self.push_frame(image)
            if out.speech and len(out.audio):
                await self.push_frame(TTSAudioRawFrame(audio=out.audio.tobytes(), sample_rate=out.sample_rate,
                                                       num_channels=1))
