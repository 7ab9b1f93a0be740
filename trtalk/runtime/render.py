"""Offline rendering: the stream's pipeline on a virtual clock, from files, into an mp4.

`render(cfg)` is `trtalk.runtime.pipeline.Pipeline` with

- audio: the file replayed as a microphone (`AudioFileSource`), with the official whole-file gain,
  so the mel equals the offline PC-AVS frontend bit for bit; one 20-frame window per output frame;
- face: the first frame of the face source, aligned as a whole clip, is the identity;
- pose: the pose file (else the face source itself) aligned as a whole clip (the official
  alignment) and replayed forward and backward at its own frame rate (`ClipPoseSource`); without
  a pose file and with a still face, the avatar's own pose; ``--pose auto``: head motion and
  blinks generated from the speech (`trtalk.runtime.motion_path`; the default of `trtalk demo`);
- paste-back into the face source's frames (the official loop over them), the face only
  (`trtalk.face.pasteback`: brow to chin by the frame's landmarks, colour-matched);
- sink: an H.264/AAC mp4 written to a temporary file and renamed at the end;
- mouth (`trtalk.runtime.mouth_path`): the audio's by default; ``--mouth video PATH`` reads the
  lips from another video aligned as a whole (output frame k shows its frame at ``k / fps``) and
  plays that video's own audio track (silence without one) instead of ``--audio``, so the frame
  count is the video's; ``--mouth webcam``/``blend`` read them from the pose source.

Frame count = ``floor(audio_seconds * fps + 0.5)`` (at most ``floor(duration * fps + 0.5)``). The official demo drops two frames at each
end (its windows must fit inside the mel); here out-of-range mel rows are silence, so the video
covers the whole audio. `trtalk stream --fast` from the same files gives the same frames.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trtalk.configcli import option
from trtalk.errors import TrtalkError
from trtalk.fsutil import check_writable, remove_stale_temps
from trtalk.runtime.clock import VirtualClock
from trtalk.families.base import ModelFamily
from trtalk.runtime.inputs import OFF, InputRequest, plan_inputs, pose_word
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.pipeline import Pipeline, PipelineConfig
from trtalk.runtime.pose_path import ClipPoseSource, PoseSample, align_clip, pingpong
from trtalk.runtime.sources import AudioFileSource
from trtalk.runtime.step import LAYOUTS, RANDOM_WEIGHTS_NOTE, Background
from trtalk.media.mp4 import Mp4Sink, check_video_path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE = ASSETS / "astronaut.png"
DEFAULT_AUDIO = ASSETS / "demo_speech.wav"

ProgressFn = Callable[[int, int], None]

__all__ = ["DEFAULT_AUDIO", "DEFAULT_FACE", "LAYOUTS", "RANDOM_WEIGHTS_NOTE", "RenderConfig",
           "RenderResult", "Renderer", "check_render", "estimate_memory", "memory_limit", "pingpong",
           "render"]


@dataclass
class RenderConfig(PipelineConfig):
    """Options of `trtalk render` (and `trtalk demo`): the pipeline's, the input files, the model."""

    output: Path = option(Path("out/render.mp4"), short="-o", metavar="OUT.mp4", help="output mp4")
    face: Path = option(DEFAULT_FACE, metavar="FILE", help="identity: image, folder of frames or video",
                        default_text="the built-in photo", aliases=("--avatar",))
    audio: Path = option(DEFAULT_AUDIO, metavar="FILE", help="speech: wav/mp3/m4a or a video's audio track",
                         default_text="the built-in clip")
    pose: Path | None = option(None, metavar="SRC", help="head pose: video or image, looped forward and backward; "
                                          "off (PD-FGC: a zero pose code, the official switch); "
                                          "'auto': head motion and blinks generated from the speech",
                               default_text="the face source itself")
    batch: int = option(8, bounds=(1, 256), help="most frames per generator call, 1 to 256")
    model: ModelOptions = option(default_factory=ModelOptions, prefix="")


@dataclass
class RenderResult:
    output: Path
    frames: int
    seconds: float
    random_weights: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def pose_off(cfg: RenderConfig) -> bool:
    """``--pose off``: no pose source, a zero pose code (PD-FGC's official switch)."""
    return pose_word(cfg.pose, OFF)


def _check_inputs(cfg: RenderConfig) -> None:
    if cfg.layout not in LAYOUTS:
        raise TrtalkError(f"unknown layout {cfg.layout!r}; choose {' or '.join(LAYOUTS)}")
    from trtalk.runtime.motion_path import is_auto

    pose = None if is_auto(cfg.pose) else cfg.pose
    for label, p in (("--face", cfg.face), ("--audio", cfg.audio), ("--pose", pose),
                     ("--mouth video", cfg.mouth_source.path)):
        if label == "--pose" and pose_off(cfg):
            continue
        if p is not None and not Path(p).exists():
            raise TrtalkError(f"{label} {p} does not exist")
    if cfg.mouth_source.source == "video" and Path(cfg.audio) != DEFAULT_AUDIO:
        raise TrtalkError("--mouth video plays the video's own audio track; drop --audio")
    check_writable(cfg.output)
    check_video_path(cfg.output, "-o")
    remove_stale_temps(cfg.output)  # what a killed render of this output left behind


#: Bytes held per aligned frame of a face or pose clip (the 224x224 RGB crop, landmarks, matrices).
ALIGNED_FRAME_BYTES = 224 * 224 * 3 + 468 * 3 * 12 + 256
#: Bytes per second of decoded audio (16 kHz float32, with the decoder's and mel's copies).
AUDIO_BYTES_PER_S = 16000 * 4 * 3
ENV_MEMORY_LIMIT = "TRTALK_MEMORY_LIMIT_MB"


def memory_limit() -> int:
    """Bytes a render may hold: ``$TRTALK_MEMORY_LIMIT_MB`` if set, else half the physical memory."""
    import os

    env = os.environ.get(ENV_MEMORY_LIMIT)
    if env:
        try:
            return int(float(env) * 2 ** 20)
        except ValueError:
            raise TrtalkError(f"${ENV_MEMORY_LIMIT} must be a number of MB, got {env!r:.40}") from None
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: 8 GiB
        return 8 << 30


def estimate_memory(cfg: RenderConfig) -> dict[str, int]:
    """What a render of ``cfg`` holds in memory at once, by part, from the inputs' headers (cheap:
    at most one frame of each is decoded): the decoded audio, the aligned face and pose clips and,
    with paste-back, every face frame at full size."""
    from trtalk.media.read import probe

    parts: dict[str, int] = {}
    mouth_video = cfg.mouth_source.path
    audio = probe(mouth_video if mouth_video is not None else cfg.audio)
    if audio.duration_s:
        parts["audio"] = int(audio.duration_s * AUDIO_BYTES_PER_S)
    if mouth_video is not None:
        parts["mouth clip"] = (audio.num_frames or 1) * ALIGNED_FRAME_BYTES
    face = probe(cfg.face)
    n_face = face.num_frames or 1
    parts["face clip"] = n_face * ALIGNED_FRAME_BYTES
    if cfg.paste_back:
        parts["face frames (paste-back)"] = n_face * face.width * face.height * 3
    if cfg.pose is not None and not pose_off(cfg) and str(cfg.pose) != "auto":
        pose = probe(cfg.pose)
        parts["pose clip"] = (pose.num_frames or 1) * ALIGNED_FRAME_BYTES
    return parts


def check_memory(cfg: RenderConfig) -> None:
    """TrtalkError before any work when `estimate_memory` exceeds `memory_limit`."""
    parts = estimate_memory(cfg)
    total, limit = sum(parts.values()), memory_limit()
    log.debug("memory estimate: %s", {k: f"{v / 2 ** 20:.0f} MB" for k, v in parts.items()})
    if total > limit:
        big = max(parts, key=parts.__getitem__)
        raise TrtalkError(f"this render would hold about {total / 2 ** 30:.1f} GiB in memory "
                          f"({big}: {parts[big] / 2 ** 30:.1f} GiB), more than the "
                          f"{limit / 2 ** 30:.1f} GiB allowed (${ENV_MEMORY_LIMIT}); use shorter or "
                          f"smaller inputs{' or drop --paste-back' if cfg.paste_back else ''}")


class Renderer:
    """One render of ``cfg`` with ``family`` (see the module docstring)."""

    def __init__(self, cfg: RenderConfig, family: ModelFamily) -> None:
        check_render(cfg)
        self.cfg = cfg
        self.family = family

    def run(self, progress: ProgressFn | None = None) -> RenderResult:
        from trtalk.audio import num_video_frames

        cfg = self.cfg
        t0 = time.perf_counter()
        face, face_frames = align_clip(cfg.face, keep_frames=cfg.paste_back)
        plan = plan_inputs(InputRequest(pose=cfg.pose, face_clip=len(face) > 1, mouth=cfg.mouth_source,
                                        offline=True, realtime=False),
                           self.family.capabilities, self.family.name)
        mouth_clip = None
        if plan.audio == "mouth-video":
            from trtalk.runtime.mouth_path import MouthClip, video_audio

            mouth_clip = MouthClip(cfg.mouth_source.path)  # type: ignore[arg-type]
            audio = video_audio(mouth_clip.path, len(mouth_clip), mouth_clip.fps)
            log.info("mouth from %s: %d frame(s) at %g fps", mouth_clip.path, len(mouth_clip), mouth_clip.fps)
        else:
            audio = AudioFileSource(cfg.audio)
        n = num_video_frames(len(audio.wave), cfg.fps)
        if mouth_clip is not None:  # the video's own audio runs a little past its last frame
            clip_n = max(1, int(math.floor(len(mouth_clip) * cfg.fps / mouth_clip.fps + 0.5)))
            if clip_n < n and (cfg.duration is None or clip_n / cfg.fps < cfg.duration):
                import dataclasses

                n, cfg = clip_n, dataclasses.replace(cfg, duration=clip_n / cfg.fps)  # the pipeline stops there
        if cfg.duration is not None:
            n = min(n, int(math.floor(cfg.duration * cfg.fps + 0.5)))
        log.info("audio %s: %.2f s -> %d frames at %g fps", cfg.audio, len(audio.wave) / 16000, n, cfg.fps)

        first = face_frames[0] if face_frames else _first_frame(cfg.face)
        mesh = face.landmarks[0] if face.landmarks is not None and bool(face.found[0]) else None
        avatar = self.family.make_avatar(first, str(cfg.face), crop=face.crops[0],
                                         crop_m=face.crop_matrices[0], mesh=mesh)
        state = self.family.new_state()
        factor = plan.pose_factor()  # PD-FGC: --pose off, or a pose file read with the official loop
        if factor is not None:
            self.family.set_factor(state, "pose", factor)
        pose = None
        if plan.pose == "file":
            pose_clip, _ = align_clip(cfg.pose)
            pose = ClipPoseSource(cfg.pose, pose_clip)
        elif plan.pose == "face":
            pose = ClipPoseSource(cfg.face, face)
        log.info("face %s: %d frame(s); pose from %s", cfg.face, len(face), plan.describe())

        self.family.set_length(state, n)
        self.family.set_lookahead(state, _file_windows(audio.wave, n, cfg.fps))

        def background(k: int, sample: PoseSample | None) -> Background:
            i = pingpong(k, len(face))
            found = face.landmarks is not None and bool(face.found[i])
            return Background(face_frames[i], face.crop_matrices[i], face.landmarks[i] if found else None)

        def report(done: int, total: int | None) -> None:
            if progress is not None:
                progress(done, total if total is not None else n)

        with Mp4Sink(cfg.output, fps=cfg.fps, audio=audio.wave, sample_rate=16000) as sink:
            pipe = Pipeline(cfg, self.family, avatar, audio, pose, [sink], VirtualClock(),
                            background if cfg.paste_back else None, mouth_clip=mouth_clip,
                            family_state=state, plan=plan)
            pipe.run(progress=report)
            frames = pipe.last_slot + 1
        if frames != n:
            raise TrtalkError(f"rendered {frames} of {n} frames; the inputs ended early")
        return RenderResult(Path(cfg.output), n, time.perf_counter() - t0, self.family.random_weights)


def _file_windows(wave, n: int, fps: float):
    """Frame k's mel window of the whole file (the official frontend), None from frame n on: the
    centred mouth smoothing's lookahead (computed on the first call: a family that never asks
    costs nothing)."""
    from trtalk.audio.mel import mel_spectrogram, mel_windows

    windows: list = []

    def window(k: int):
        if not windows:
            windows.append(mel_windows(mel_spectrogram(wave), n, fps))
        return windows[0][k] if 0 <= k < n else None

    return window


def _first_frame(path: Path):
    from trtalk.face import open_media

    return next(iter(open_media(path)))


def check_render(cfg: RenderConfig) -> None:
    """Every check a render makes before work starts (inputs exist, output writable, memory
    estimate within bounds): TrtalkError in milliseconds instead of after the model loads."""
    _check_inputs(cfg)
    check_memory(cfg)


def render(cfg: RenderConfig, family: ModelFamily, progress: ProgressFn | None = None) -> RenderResult:
    """Render ``cfg`` to ``cfg.output``; raises TrtalkError on bad input, leaving no output file."""
    return Renderer(cfg, family).run(progress)
