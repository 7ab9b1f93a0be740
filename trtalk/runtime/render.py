"""Offline renderer: a face, a speech track and a pose source -> a talking-face mp4.

The steps are the official PC-AVS inference, without its manual preprocessing:

1. audio: decode to 16 kHz mono, PC-AVS mel, one 20-frame window per output frame
   (frame t uses mel rows from ``window_start(t)``; out-of-range rows are silence);
2. face: mediapipe landmarks -> clip alignment -> 224 crops; the first crop is the identity
   reference (encoded once);
3. pose: the pose video's (or image's) aligned crops, else the face's own; output frame t uses
   pose frame ``pingpong(t)`` (forward, then backward, ... as the official loader loops);
4. per batch of frames: mouth code, pose code, style = id | mouth | pose, generator;
5. frames to an H.264 mp4 with the driving audio as AAC, written atomically.

Frame count = ``floor(audio_seconds * fps + 0.5)`` (`trtalk.audio.num_video_frames`). The
official demo drops two frames at each end (its windows must fit inside the mel); here
out-of-range mel rows are zero (silence), so the video covers the whole audio.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np
import torch

from trtalk.audio import load_audio, mel_spectrogram, mel_windows, num_video_frames
from trtalk.errors import TrtalkError
from trtalk.face import AlignedClip, PasteBack, align_frames, open_media, to_tensor
from trtalk.fsutil import check_writable
from trtalk.models.pcavs import PCAVSConfig
from trtalk.media.frames import composite_side_by_side
from trtalk.media.mp4 import Mp4Sink

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE = ASSETS / "astronaut.png"
DEFAULT_AUDIO = ASSETS / "demo_speech.wav"
LAYOUTS = ("generated", "side-by-side")
RANDOM_WEIGHTS_NOTE = "random weights - no checkpoint"

ProgressFn = Callable[[int, int], None]


class Runner(Protocol):
    """What the renderer needs from an inference backend (PyTorch model or engines).

    All tensors are NCHW float32 on ``device``; images RGB in [-1, 1].
    """

    def encode_identity(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def encode_pose(self, image: torch.Tensor) -> torch.Tensor: ...
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor: ...
    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor: ...


@dataclass
class RenderConfig:
    """Options of `trtalk render`; None paths take the built-in defaults where there are any."""

    output: Path
    face: Path = DEFAULT_FACE
    audio: Path = DEFAULT_AUDIO
    pose: Path | None = None
    checkpoint: Path | None = None
    fps: float = 25.0
    layout: str = "generated"
    paste_back: bool = False
    device: str = "cpu"
    batch: int = 8
    noise: str = "fixed"
    seed: int = 0
    backend: str = "torch"


@dataclass
class RenderResult:
    output: Path
    frames: int
    seconds: float
    random_weights: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def pingpong(t: int, n: int) -> int:
    """Index into ``n`` frames that runs 0..n-1, n-1..0, 0.. (the official pose loop)."""
    if n <= 1:
        return 0
    period, r = divmod(t, n)
    return r if period % 2 == 0 else n - 1 - r


def check_device(device: str) -> None:
    """TrtalkError when ``device`` names CUDA and this PyTorch has none (render, stream, bench)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrtalkError(f"--device {device} asked for, but PyTorch sees no CUDA device; use --device cpu")


def _check_config(cfg: RenderConfig) -> None:
    if cfg.layout not in LAYOUTS:
        raise TrtalkError(f"unknown layout {cfg.layout!r}; choose {' or '.join(LAYOUTS)}")
    if cfg.fps <= 0 or cfg.batch < 1:
        raise TrtalkError("--fps must be > 0 and --batch >= 1")
    check_device(cfg.device)
    for label, p in (("--face", cfg.face), ("--audio", cfg.audio), ("--pose", cfg.pose)):
        if p is not None and not Path(p).exists():
            raise TrtalkError(f"{label} {p} does not exist")
    check_writable(cfg.output)


def make_runner(checkpoint: Path | None, backend: str = "torch", device: str = "cpu", seed: int = 0,
                noise: str = "fixed", config: PCAVSConfig | None = None) -> tuple[Runner, bool]:
    """The inference backend and whether it runs on seeded random weights (warned loudly).

    ``config`` overrides the architecture (tests use `PCAVSConfig.small()`).
    """
    from trtalk.models import PCAVS, load_pcavs

    random_weights = checkpoint is None
    if backend != "torch":
        from trtalk.engine import RunnerOptions, open_runner

        return open_runner(backend, checkpoint, device, RunnerOptions(config=config), seed=seed), random_weights
    if random_weights:
        log.warning("no --checkpoint given: running with SEEDED RANDOM WEIGHTS (seed %d); the "
                    "face will not look like the input. Pass the official PC-AVS checkpoint folder "
                    "or a `trtalk convert` file to get real results.", seed)
        model = PCAVS.random(seed=seed, config=config)
    else:
        model = load_pcavs(checkpoint, config)
    model.netG.noise_mode = noise
    return model.to(device).eval(), random_weights


def _stamp(frame: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` on the bottom edge of ``frame`` (white on a dark band)."""
    out = np.ascontiguousarray(frame)
    h, w = out.shape[:2]
    scale = max(0.35, w / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y0 = h - th - base - 6
    out[y0:, :] = (out[y0:, :].astype(np.uint16) // 3).astype(np.uint8)
    cv2.putText(out, text, (4, h - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W in [-1, 1] -> B x H x W x 3 uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _align(path: Path, keep_frames: bool) -> tuple[AlignedClip, list[np.ndarray]]:
    """Align a face source; keep its full-size frames in memory only when asked (paste-back)."""
    source = open_media(path)
    if not keep_frames:
        return align_frames(source), []
    frames = list(source)
    return align_frames(frames, name=str(path)), frames


class Renderer:
    """Owns the steps of one render; see the module docstring."""

    def __init__(self, cfg: RenderConfig, runner: Runner | None = None, random_weights: bool = False):
        _check_config(cfg)
        self.cfg = cfg
        if runner is None:
            runner, random_weights = make_runner(cfg.checkpoint, cfg.backend, cfg.device, cfg.seed,
                                                 cfg.noise)
        self.runner = runner
        self.random_weights = random_weights
        self.device = torch.device(cfg.device)

    def run(self, progress: ProgressFn | None = None) -> RenderResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        wave = load_audio(cfg.audio)
        n = num_video_frames(len(wave), cfg.fps)
        windows = mel_windows(mel_spectrogram(wave), n, cfg.fps)
        log.info("audio %s: %.2f s -> %d frames at %g fps", cfg.audio, len(wave) / 16000, n, cfg.fps)

        face, face_frames = _align(Path(cfg.face), keep_frames=cfg.paste_back)
        pose = _align(Path(cfg.pose), keep_frames=False)[0] if cfg.pose is not None else face
        log.info("face %s: %d frame(s); pose from %s: %d frame(s)", cfg.face, len(face),
                 cfg.pose or "the face", len(pose))

        run = self.runner
        dev = self.device
        id_vec, id_map = run.encode_identity(to_tensor(face.crops[:1]).to(dev))
        pose_codes = self._pose_codes(pose, n)
        paster = PasteBack() if cfg.paste_back else None

        done = 0
        with Mp4Sink(cfg.output, fps=cfg.fps, audio=wave, sample_rate=16000) as sink:
            for start in range(0, n, cfg.batch):
                idx = list(range(start, min(n, start + cfg.batch)))
                mel = torch.from_numpy(windows[idx[0]: idx[-1] + 1]).to(dev)
                mouth = run.encode_audio(mel)
                pc = pose_codes[[pingpong(t, len(pose)) for t in idx]]
                b = len(idx)
                style = torch.cat([id_vec.expand(b, -1), mouth, pc], 1)
                images = _to_uint8(run.generate(style, id_map.expand(b, -1, -1, -1)))
                for t, img in zip(idx, images):
                    sink.write(self._compose(t, img, face, face_frames, pose, paster))
                done += b
                if progress:
                    progress(done, n)
        secs = time.perf_counter() - t0
        return RenderResult(Path(cfg.output), n, secs, self.random_weights)

    def _pose_codes(self, pose: AlignedClip, n: int) -> torch.Tensor:
        """Pose codes of the pose frames the output uses (at most ``n``), indexed by frame."""
        used = min(len(pose), n)
        codes = []
        for s in range(0, used, self.cfg.batch):
            crops = to_tensor(pose.crops[s: min(used, s + self.cfg.batch)]).to(self.device)
            codes.append(self.runner.encode_pose(crops))
        out = torch.cat(codes)
        if used < len(pose):  # frames past n are never indexed; pad so indexing stays simple
            out = torch.cat([out, out[-1:].expand(len(pose) - used, -1)])
        return out

    def _compose(self, t: int, gen: np.ndarray, face: AlignedClip, face_frames: list[np.ndarray],
                 pose: AlignedClip, paster: PasteBack | None) -> np.ndarray:
        out = gen
        if paster is not None:
            fi = pingpong(t, len(face))
            out = paster(face_frames[fi], gen, face.crop_matrices[fi])
        if self.cfg.layout == "side-by-side":
            panels = [face.crops[0], out, pose.crops[pingpong(t, len(pose))]]
            out = composite_side_by_side(panels, height=min(512, out.shape[0]) if paster else 224)
        if self.random_weights:
            out = _stamp(out, RANDOM_WEIGHTS_NOTE)
        return out


def render(cfg: RenderConfig, progress: ProgressFn | None = None) -> RenderResult:
    """Render ``cfg`` to ``cfg.output``; raises TrtalkError on bad input, leaving no output file."""
    return Renderer(cfg).run(progress)
