"""The PD-FGC family: PC-AVS's frame step with separate pose, eyes (blink, gaze) and emotion.

Per batch of frames k (see `trtalk.families.base` for the interface):

    mouth   = smoother(1.5 * audio(mel windows))     # causal live, the official centred one offline
    pose    = pose(tracked crops)                    # motion encoder: B x 6 (also caches eyes, emotion)
    eye     = the eyes source at k                   # B x 6: clip, image, webcam, avatar, auto, off
              (auto: the avatar's eyes, blinking with the speech: `listen` hears each frame's mel
              window as the motion path does, the blink generator shuts the lids after phrase
              ends, never in a wide-open mouth; `blink_eye_code` maps the closure into the code)
    emotion = the emotion source at k                # B x 30 (a preset x strength, live changes)
    image   = generator(id | mouth | 1.2 emotion | 1.2 eye | pose, id_map)   # seeded noise maps

Sources are `trtalk.families.controls.FactorSpec`; live changes go through `Controls` and apply at
the first frame made after they arrive. The networks come from `trtalk.engine.open_runner` (any
backend: torch, onnxruntime, tensorrt, aot; the graphs of `trtalk.families.pdfgc.stages`, exported
once into the cache) or are a `PDFGC` itself (tests).

Mouth smoothing: the official kernel is centred (0.274, 0.452, 0.274 over frames k-1, k, k+1): it
needs frame k+1's audio, i.e. one more frame (40 ms at 25 fps) of audio lookahead than PC-AVS.
`trtalk render` knows the whole file and runs it exactly ("centred"); the stream runs the
"causal" variant (0.274, 0.726 over k-1, k), which adds no latency.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trtalk.errors import TrtalkError
from trtalk.families.controls import Controls, FactorSpec, clip_frame
from trtalk.families.base import Avatar, CropCodeCache, FamilyState, ModelFamily, PoseInput, align_photo, to_uint8
from trtalk.families.spec import Capabilities, OpenRequest

log = logging.getLogger(__name__)

_WHICH = {"pose": 0, "eyes": 1, "emotion": 2}
#: Blink dims of the eye code (the official "blink off" zeroes them: lib/inferencer.py multiplies
#: the eye code by [0, 0, 1, 1, 0, 0] when blink is off and by [1, 1, 0, 0, 1, 1] when gaze is off,
#: `trtalk.families.pdfgc.model.BLINK_OFF_MASK`); the rest is gaze.
BLINK_DIMS = (0, 1, 4, 5)
GAZE_DIMS = (2, 3)


def blink_eye_code(eye: torch.Tensor, closed: torch.Tensor, closure: torch.Tensor | float) -> torch.Tensor:
    """Eye codes ``eye`` (B x 6, or 6) with the lids ``closure`` (B, or a number; 0 open .. 1
    shut) of the way to the closed-eye code ``closed`` (6) on the blink dims; the gaze dims stay
    ``eye``'s. Exactly ``eye`` at closure 0 and ``closed`` (blink dims) at 1 (`torch.lerp`)."""
    closed = closed.to(eye.device, eye.dtype).expand_as(eye)
    c = torch.as_tensor(closure, dtype=eye.dtype, device=eye.device)
    c = c.reshape(c.shape + (1,)).expand_as(eye)
    blink = torch.zeros(eye.shape[-1], dtype=torch.bool, device=eye.device)
    blink[list(BLINK_DIMS)] = True
    return torch.where(blink, torch.lerp(eye, closed, c), eye)


CAPABILITIES = Capabilities(visual_mouth=False, eye_controls=True, emotion_controls=True,
                            checkpoint=True, needs_checkpoint=True, noise=("seeded", "fixed", "random", "zero"),
                            pose_factor=True, live_controls=True)


class PDFGCState(FamilyState):
    """One PD-FGC stream: its factor sources and clips, live controls, mouth smoothing, blinks
    (the speech features they read), webcam motion codes by crop content and frame counters.
    Made by `PDFGCFamily.new_state` from the family's options; the networks stay the family's."""

    def __init__(self, specs: dict[str, FactorSpec], clips: dict[str, torch.Tensor], eyes_given: bool,
                 controls: Controls, mouth_smoothing: str, blink: Any, pose_cache: int) -> None:
        #: each factor's source (pose: ``webcam`` is the pipeline's pose path)
        self.specs = specs
        #: codes of the factors' image/video sources (``pose``: a pose file's)
        self.clips = clips
        #: whether the eyes' source was chosen (else the avatar's, blinking with generated motion)
        self.eyes_given = eyes_given
        self.controls = controls
        self.mouth_smoothing = mouth_smoothing
        self.lookahead: Callable[[int], torch.Tensor | None] | None = None
        self.smoother: Any = None
        self.blink_cfg = blink
        self.motion_cfg: Any = None  # the speech features' levels (`trtalk.motion.head.MotionConfig`)
        #: (pose, eyes, emotion) motion codes of tracked crops by content
        self.cache = CropCodeCache(pose_cache)
        #: output frames when known (offline: the pose box mean stops at the last); the pose clip's
        #: first frame's output frame (a live switch starts it mid-stream)
        self.length: int | None = None
        self.pose_offset = 0
        #: the last webcam motion codes (pose, eyes, emotion) a frame used: held while the face is lost
        self.last_motion: tuple[torch.Tensor, ...] | None = None
        self.next_frame = 0
        self.reset_hook: Callable[["PDFGCState"], None] | None = None

    @property
    def pose_encodings(self) -> int:
        return self.cache.encodings

    def reset(self) -> None:
        if self.reset_hook is not None:
            self.reset_hook(self)


class PDFGCFamily(ModelFamily):
    """PD-FGC with per-factor sources and live controls; ``model`` is a PD-FGC `Runner`
    (`open_pdfgc`) or a `trtalk.families.pdfgc.model.PDFGC` (same encode/generate surface).

    The family holds the networks and what its options encode once (the eyes and emotion files'
    codes, the presets, the closed-eye code), shared by every stream; each stream's sources,
    controls, smoothing and blinks are its `PDFGCState` (`new_state`)."""

    name = "pdfgc"
    capabilities = CAPABILITIES
    output_size = 224

    def __init__(self, model: Any, random_weights: bool = False, device: str = "cpu", *,
                 fps: float = 25.0, eyes: FactorSpec | None = None,
                 emotion: FactorSpec = FactorSpec("avatar"), emotion_strength: float = 1.0,
                 eyes_closed: Path | None = None, mouth_smoothing: str = "causal",
                 blink: Any = None, presets: dict[str, Path] | None = None, pose_cache: int = 256) -> None:
        super().__init__(random_weights)
        self.model = model
        self.device = torch.device(device)
        self.fps = fps
        self.eyes_given = eyes is not None
        self.specs: dict[str, FactorSpec] = {"pose": FactorSpec("webcam"), "eyes": eyes or FactorSpec("avatar"),
                                             "emotion": emotion}
        if not 0 <= emotion_strength <= 2:
            raise TrtalkError("--emotion-strength must be in [0, 2]")
        self.emotion_strength = emotion_strength
        #: serialises the motion encoder: a live pose-file switch encodes on the control
        #: endpoint's thread while frames are made (CUDA graphs and TensorRT contexts are
        #: not re-entrant)
        self._motion_lock = threading.Lock()
        if mouth_smoothing not in ("causal", "centred"):
            raise TrtalkError("--mouth-smoothing is causal or centred")
        self.mouth_smoothing = mouth_smoothing
        self.blink_cfg = blink
        self.pose_cache = pose_cache
        self.clips: dict[str, torch.Tensor] = {}
        for factor in ("eyes", "emotion"):
            spec = self.specs[factor]
            if spec.kind in ("image", "video"):
                self.clips[factor] = self._encode_file(spec.path, factor)[_WHICH[factor]]
        self.presets: dict[str, torch.Tensor] = {}
        for name, path in (presets or {}).items():
            self.presets[name] = self._encode_file(path, "emotion")[2][0]
        if emotion.kind == "image":
            self.presets.setdefault(Path(emotion.path).stem, self.clips["emotion"][0])
        self._closed_eye: torch.Tensor | None = None
        if eyes_closed is not None:
            self._closed_eye = self._encode_file(eyes_closed, "eyes-closed")[1][0]

    def new_state(self) -> PDFGCState:
        """A stream's state with the family's sources, a fresh copy of the presets in its controls."""
        state = PDFGCState(dict(self.specs), dict(self.clips), self.eyes_given, Controls(self.presets),
                           self.mouth_smoothing, self.blink_cfg, self.pose_cache)
        state.controls.state.emotion_strength = self.emotion_strength  # presets picked live start here
        state.controls.on_blink = lambda: state.blinker.blink_now()
        state.controls.on_pose_source = lambda source, prepared: self._switch_pose(state, source, prepared)
        state.controls.prepare_pose = lambda path: self._encode_file(Path(path), "pose",
                                                                     check=state.controls.check_open)[0]
        state.reset_hook = self._reset
        state.reset()
        return state

    def _encode_motion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self._motion_lock:
            return self.model.encode_motion(x)

    # -- set-up ------------------------------------------------------------------------------

    def _encode_file(self, path: Path | None, label: str, check: Callable[..., None] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Motion codes of every frame of an image or video (aligned as a whole clip). ``check``
        is called after every frame and batch (it raises to cancel: `Controls.check_open`)."""
        from trtalk.face import align_clip, to_tensor

        check = check or (lambda *a: None)
        clip, _ = align_clip(Path(path), progress=check)  # type: ignore[arg-type]
        found = np.asarray(clip.found, bool)
        if not found.any():
            raise TrtalkError(f"--{label} {path}: no face found; use a clear, frontal face")
        crops = np.asarray(clip.crops)
        outs = []
        for s in range(0, len(crops), 16):
            check()
            outs.append(self._encode_motion(to_tensor(crops[s:s + 16]).to(self.device)))
        return tuple(torch.cat([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]

    def _closed_eye_of(self, avatar: Avatar) -> torch.Tensor | None:
        """The closed-eye code: ``--eyes-closed``'s, else the avatar's own (`warp_closed_eye`)."""
        return self._closed_eye if self._closed_eye is not None else avatar.state.get("eyes_closed")

    def warp_closed_eye(self, image: np.ndarray, name: str) -> torch.Tensor | None:
        """The avatar's own closed-eye code: its photo with the lids shut by the warp avatar
        (`trtalk.warp.render.WarpRenderer.frame(..., eye_closure=1)`), aligned and encoded. None
        when this trtalk's warp renderer cannot shut eyes or the shut photo has no face."""
        import inspect

        from trtalk.face import align_frames, to_tensor
        from trtalk.warp.render import WarpRenderConfig, WarpRenderer

        if "eye_closure" not in inspect.signature(WarpRenderer.frame).parameters:
            return None
        try:
            renderer = WarpRenderer(image, WarpRenderConfig(paste_back=True), name)
            shut = renderer.frame(0.0, 0.0, np.eye(3), eye_closure=1.0)  # type: ignore[call-arg]
            clip = align_frames([shut], name=f"{name} (eyes shut)")
        except TrtalkError as exc:
            log.info("no closed-eye code from the warp avatar: %s", exc)
            return None
        if not bool(clip.found[0]):
            return None
        return self._encode_motion(to_tensor(clip.crops[0]).to(self.device))[1][0]

    def set_factor(self, state: PDFGCState, factor: str, spec: FactorSpec) -> None:  # type: ignore[override]
        """Change stream ``state``'s source of a factor. For ``pose``: ``webcam`` is the pipeline's
        pose path (the default), ``off`` a zero code, ``avatar`` its own pose, and an image or
        video is read here with the official loop and 3-frame box mean (the pipeline then has no
        pose source)."""
        if spec.kind in ("image", "video"):
            state.clips[factor] = self._encode_file(spec.path, factor)[_WHICH[factor]]
            if factor == "pose":
                state.pose_offset = 0
        state.specs[factor] = spec
        if factor == "eyes":
            state.eyes_given = True
            state.blinker = self._new_blinker(state)

    def _switch_pose(self, state: PDFGCState, source: str, prepared: torch.Tensor | None) -> None:
        """A live pose switch: a name, or a file whose codes were encoded when it was submitted."""
        if prepared is None:
            self.set_factor(state, "pose", FactorSpec(source))
            return
        state.clips["pose"] = prepared
        state.pose_offset = state.controls.frame - 2  # the clip starts at its frame 2, as offline
        state.specs["pose"] = FactorSpec("video", Path(source))

    def set_length(self, state: PDFGCState, n: int | None) -> None:  # type: ignore[override]
        """The number of output frames when known (offline): the pose box mean is truncated at
        the last one, as the official one."""
        state.length = n

    def clip_pose(self, state: PDFGCState, frames: Sequence[int]) -> torch.Tensor:
        """Pose codes B x 6 of ``frames`` from the pose clip (`set_factor`): the official loop,
        then the 3-frame box mean over output frames (truncated at frame 0 and the last frame)."""
        clip = state.clips["pose"]
        n, off = state.length, state.pose_offset
        rows = []
        for k in frames:
            js = [j for j in (k - 1, k, k + 1) if j >= 0 and (n is None or j < n)]
            rows.append(torch.stack([clip[clip_frame(j - off, len(clip))] for j in js]).mean(0))
        return torch.stack(rows)

    def set_lookahead(self, state: PDFGCState, fn: Callable[[int], torch.Tensor | None]) -> None:  # type: ignore[override]
        """Offline: ``fn(k)`` -> frame k's mel window (1 x 80 x 20) or None past the end, so the
        centred mouth smoothing runs exactly as the official one (the causal one never asks)."""
        state.lookahead = fn
        self._make_smoother(state)

    def _make_smoother(self, state: PDFGCState) -> None:
        from trtalk.families.pdfgc.model import MouthSmoother

        if state.mouth_smoothing == "centred":
            if state.lookahead is None:
                raise TrtalkError("--mouth-smoothing centred needs the whole audio (trtalk render); "
                                  "live it would add 40 ms: use causal")
            lookahead = state.lookahead

            def next_embed(k: int) -> torch.Tensor | None:
                w = lookahead(k)
                if w is None:
                    return None
                return self.model.encode_audio(torch.as_tensor(w).reshape(1, 1, 80, 20).to(self.device))[0]

            state.smoother = MouthSmoother("centred", next_embed)
        else:
            state.smoother = MouthSmoother("causal")

    def configure_motion(self, state: PDFGCState, motion: Any = None, blink: Any = None,  # type: ignore[override]
                         avatar: Avatar | None = None) -> None:
        """The generated-motion settings of the pipeline (``--motion-*``, ``--blink-*``): the
        blinks of ``--eyes auto`` then make the same decisions from the same mel windows as
        ``--pose auto``'s motion path (`trtalk.runtime.motion_path.MotionPose`). ``avatar``: the
        head moves by generated motion: with no eyes source chosen, ``avatar``'s eyes blink with
        the speech too (``--eyes auto``), when a closed-eye code can be had."""
        state.motion_cfg, state.blink_cfg = motion, blink
        if avatar is not None and not state.eyes_given and state.specs["eyes"].kind == "avatar":
            if self._closed_eye_of(avatar) is None:
                closed = self.warp_closed_eye(avatar.image, "the avatar photo")
                if closed is not None:
                    avatar.state["eyes_closed"] = closed
            if self._closed_eye_of(avatar) is not None:
                state.specs["eyes"] = FactorSpec("auto")
            else:
                log.info("generated motion without blinks: no closed-eye code (give --eyes-closed IMAGE)")
        state.reset()

    def _new_blinker(self, state: PDFGCState) -> Any:
        """Natural blinks for ``--eyes auto``; otherwise a generator that blinks only when asked."""
        from trtalk.motion.blink import BlinkConfig, BlinkGenerator

        cfg = state.blink_cfg
        if state.specs["eyes"].kind != "auto":
            cfg = BlinkConfig(rate_per_min=0.0, speech_rate_per_min=0.0,
                              seed=cfg.seed if cfg is not None else 0)
        return BlinkGenerator(self.fps, cfg)

    def _reset(self, state: PDFGCState) -> None:
        from trtalk.motion.head import MotionConfig, SpeechFeatures

        if state.mouth_smoothing == "causal" or state.lookahead is not None:
            self._make_smoother(state)
        state.blinker = self._new_blinker(state)
        state.speech = SpeechFeatures(self.fps, state.motion_cfg or MotionConfig())
        state.heard = state.blinked = -1  # the last frame listened to / blinked
        state.features: dict[int, list[Any]] = {}
        state.next_frame = 0
        state.last_motion = None

    # -- the interface ----------------------------------------------------------------------

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        from trtalk.face import to_tensor

        crop, crop_m, mesh = align_photo(image, name, crop, crop_m, mesh)
        x = to_tensor(crop).to(self.device)
        id_vec, id_map = self.model.encode_identity(x)
        pose, eye, emo = self._encode_motion(x)
        # mesh: the photo's landmarks, for paste-back's face mask
        state = {"id_vec": id_vec, "id_map": id_map, "eyes": eye[0], "emotion": emo[0], "mesh": mesh}
        if self.specs["eyes"].kind == "auto" and self._closed_eye is None:
            closed = self.warp_closed_eye(image, name)
            if closed is None:
                raise TrtalkError("--eyes auto needs a closed-eye code: give --eyes-closed IMAGE (a "
                                  "still of a face with shut eyes); this trtalk's warp avatar cannot "
                                  "shut the avatar's eyes")
            state["eyes_closed"] = closed
        return Avatar(image, crop, crop_m, pose[0], state)

    def mouth(self, state: PDFGCState, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        if state.mouth_smoothing == "centred" and state.lookahead is None:
            self._make_smoother(state)  # raises: the centred kernel needs the next frame's audio
        self.listen(state, mel, frames)
        return state.smoother(self.model.encode_audio(mel.to(self.device)), list(frames))

    def listen(self, state: PDFGCState, mel: torch.Tensor | np.ndarray, frames: Sequence[int]) -> None:
        """Speech features (speaking, mouth opening: `trtalk.motion.head.SpeechFeatures`) of the
        mel windows B x 1 x 80 x 20 of ``frames`` (increasing), which the blinks of the frames
        read; frames skipped live advance the features' clock with the next window, as the
        motion path's do. A frame heard before is not heard again."""
        windows = mel.detach().float().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
        for k, w in zip(frames, windows):
            k = int(k)
            if k <= state.heard:
                continue
            state.features[k] = [state.speech.step(w) for _ in range(k - state.heard)]
            state.heard = k
        while len(state.features) > 64:  # never blinked (eyes off, no closed-eye code)
            del state.features[next(iter(state.features))]

    def _closure(self, state: PDFGCState, k: int) -> float:
        """Eye closure of frame ``k`` from the blink generator, stepped once per frame (frames
        skipped since the last one too) with the speech features `listen` found for ``k``."""
        feats = state.features.pop(k, None)
        for old in [j for j in state.features if j < k]:
            del state.features[old]
        steps = max(1, k - state.blinked)
        if feats is None or len(feats) != steps:
            feats = (feats or [None])[-1:] * steps
        state.blinked = max(state.blinked, k)
        c = 0.0
        for f in feats:
            c = state.blinker.step(speaking=f.speaking if f is not None else None,
                                   mouth_open=f.mouth_open if f is not None else None)
        return c

    def motion(self, state: PDFGCState,
               inputs: Sequence[PoseInput]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pose B x 6, eye B x 6, emotion B x 30) of tracked crops: one encoder pass, cached by
        crop content in the stream's state (a looping file or a still costs one encoding per
        distinct frame; the frame step asks again for the same crops' eyes and emotion)."""
        from trtalk.face import to_tensor

        def encode(crops: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
            return list(zip(*self._encode_motion(to_tensor(crops).to(self.device))))

        rows = state.cache([p.crop for p in inputs], encode)
        return tuple(torch.stack([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]

    def pose(self, state: PDFGCState, inputs: Sequence[PoseInput]) -> torch.Tensor:  # type: ignore[override]
        return self.motion(state, inputs)[0]

    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        return avatar.ref_pose.expand(len(frames), -1)

    def synthesize(self, state: PDFGCState, avatar: Avatar, mel: torch.Tensor, frames: Sequence[int],  # type: ignore[override]
                   pose: torch.Tensor, camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        return self.generate(state, avatar, self.mouth(state, mel, frames), pose, frames, camera)

    # -- factors ----------------------------------------------------------------------------

    def _camera_motion(self, state: PDFGCState, frames: Sequence[int],
                       camera: Sequence[PoseInput | None] | None) -> list[tuple[torch.Tensor, ...] | None]:
        """Per frame, the webcam motion codes (pose, eyes, emotion) of the crop its pose code was
        encoded from (None: no crop, the pose was held), when a factor follows the webcam."""
        out: list[tuple[torch.Tensor, ...] | None] = [None] * len(frames)
        if camera is None or not any(state.specs[f].kind == "webcam" for f in ("eyes", "emotion")):
            return out
        have = [i for i, c in enumerate(camera) if c is not None]
        if have:
            codes = self.motion(state, [camera[i] for i in have])  # type: ignore[misc]
            for j, i in enumerate(have):
                out[i] = tuple(c[j] for c in codes)
        return out

    def _source(self, state: PDFGCState, factor: str, avatar: Avatar, k: int,
                webcam: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """Raw code of ``factor`` at frame ``k``; ``webcam``: the frame's camera codes (None: held)."""
        spec = state.specs[factor]
        base = avatar.state[factor]
        if spec.kind == "off":
            return torch.zeros_like(base)
        if spec.kind in ("image", "video"):
            clip = state.clips[factor]
            return clip[clip_frame(k, len(clip))].to(base.device, base.dtype)
        if spec.kind == "webcam":
            held = webcam if webcam is not None else state.last_motion  # held while the face is lost
            if held is not None:
                return held[_WHICH[factor]].to(base.device, base.dtype)
        return base  # avatar, auto (gaze and open lids from the avatar), webcam before a face

    def factor_codes(self, state: PDFGCState, avatar: Avatar, frames: Sequence[int],
                     camera: Sequence[PoseInput | None] | None = None) -> dict[str, torch.Tensor]:
        """Raw (unweighted) eye B x 6 and emotion B x 30 codes of ``frames``, live controls
        applied; the controls' queued changes take effect at the first of ``frames``.
        ``camera``: per frame, the tracked input its pose came from (webcam eyes and emotion)."""
        controls = state.controls
        st = controls.state
        eyes, emos = [], []
        webcam = self._camera_motion(state, frames, camera)
        for k, cam in zip(frames, webcam):
            controls.begin_frame(int(k))
            eye = self._source(state, "eyes", avatar, k, cam).clone()
            closed = self._closed_eye_of(avatar)
            if closed is not None and state.specs["eyes"].kind != "off":
                eye = blink_eye_code(eye, closed, self._closure(state, int(k)))
            if state.specs["eyes"].kind != "off":
                eye[list(GAZE_DIMS)] += torch.tensor(st.gaze_offset, dtype=eye.dtype, device=eye.device)
            if st.emotion_preset is not None:
                emo = st.emotion_strength * controls.presets[st.emotion_preset].to(eye.device)
            else:
                emo = self._source(state, "emotion", avatar, k, cam)
                if state.specs["emotion"].kind == "image":
                    emo = emo * self.emotion_strength
            if cam is not None:
                state.last_motion = cam
            eye = st.frozen.get("eyes", eye)
            emo = st.frozen.get("emotion", emo)
            controls.current["eyes"], controls.current["emotion"] = eye, emo
            eyes.append(eye)
            emos.append(emo)
        return {"eyes": torch.stack(eyes), "emotion": torch.stack(emos)}

    def pose_codes(self, state: PDFGCState, avatar: Avatar, frames: Sequence[int], pose: torch.Tensor) -> torch.Tensor:
        """The pose codes B x 6 the generator gets for ``frames``: the pose path's ``pose``, or
        the pose factor's own source (off, the avatar's, a clip), or the frozen code."""
        kind = state.specs["pose"].kind
        if kind == "off":
            pose = torch.zeros_like(pose)
        elif kind == "avatar":
            pose = avatar.ref_pose.to(pose.device, pose.dtype).expand_as(pose)
        elif kind in ("image", "video"):
            pose = self.clip_pose(state, frames).to(pose.device, pose.dtype)
        frozen = state.controls.state.frozen.get("pose")
        if frozen is not None:
            pose = frozen.to(pose.device, pose.dtype).expand_as(pose)
        if len(pose):
            state.controls.current["pose"] = pose[-1]
        return pose

    def frame_codes(self, state: PDFGCState, avatar: Avatar, frames: Sequence[int],  # type: ignore[override]
                    pose: torch.Tensor, camera: Sequence[PoseInput | None] | None = None) -> dict[str, torch.Tensor]:
        """Raw eye B x 6, emotion B x 30 and pose B x 6 codes of this stream's ``frames`` (in
        order): what `generate_many` takes per item."""
        state.next_frame = int(frames[-1]) + 1
        codes = self.factor_codes(state, avatar, frames, camera)
        codes["pose"] = self.pose_codes(state, avatar, frames, pose)
        return codes

    def _render(self, id_vec: torch.Tensor, id_map: torch.Tensor, mouth: torch.Tensor,
                codes: dict[str, torch.Tensor]) -> np.ndarray:
        from trtalk.families.pdfgc.model import EMOTION_WEIGHT, EYE_WEIGHT, PDFGC

        style = PDFGC.style(id_vec, mouth, EMOTION_WEIGHT * codes["emotion"].to(mouth),
                            EYE_WEIGHT * codes["eyes"].to(mouth), codes["pose"].to(mouth))
        with torch.no_grad():
            return to_uint8(self.model.generate(style, id_map))

    def generate(self, state: PDFGCState, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor,  # type: ignore[override]
                 frames: Sequence[int] | None = None, camera: Sequence[PoseInput | None] | None = None,
                 controls: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """Frames from mouth and pose codes; ``controls`` {"eyes": B x 6, "emotion": B x 30} raw
        codes, else the stream's sources at ``frames`` (default: its next frames in order)."""
        b = mouth.shape[0]
        if frames is None:
            frames = list(range(state.next_frame, state.next_frame + b))
        pose = pose.to(mouth.device, mouth.dtype)
        if controls is None:
            codes = self.frame_codes(state, avatar, frames, pose, camera)
        else:
            state.next_frame = int(frames[-1]) + 1
            codes = {**controls, "pose": self.pose_codes(state, avatar, frames, pose)}
        return self._render(avatar.state["id_vec"].expand(b, -1),
                            avatar.state["id_map"].expand(b, -1, -1, -1), mouth, codes)

    def generate_many(self, avatars: Sequence[Avatar], mouth: torch.Tensor, pose: torch.Tensor,
                      codes: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
        """With ``codes`` (each item's `frame_codes` row, from its stream's state): one style
        composition and one generator call for items of different avatars and streams."""
        if codes is None:
            return super().generate_many(avatars, mouth, pose)
        stacked = {k: torch.stack([c[k] for c in codes]) for k in ("eyes", "emotion", "pose")}
        id_vec = torch.cat([a.state["id_vec"] for a in avatars])
        id_map = torch.cat([a.state["id_map"] for a in avatars])
        return self._render(id_vec, id_map, mouth, stacked)


def open_pdfgc(request: OpenRequest) -> PDFGCFamily:
    """The PD-FGC family from a checkpoint (folder or converted file), an export directory, or
    seeded random weights without one, with its networks from ``request.make_runner``
    (`trtalk.engine.open_runner`) on any backend (torch, onnxruntime, tensorrt, aot; the graphs and
    engines hold the seeded noise maps); ``request.controls`` are the factor sources."""
    runner = request.make_runner(request.backend, request.checkpoint, request.device, request.runner_options)
    if runner.family != "pdfgc":
        raise TrtalkError(f"{request.checkpoint} is not a PD-FGC checkpoint; drop --model pdfgc")
    return PDFGCFamily(runner, runner.random_weights, request.device, fps=request.fps, **dict(request.controls))
