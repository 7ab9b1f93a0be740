"""The interface the frame step drives (`ModelFamily`), and what every family's adapter shares.

A family turns the step's inputs into frames:

    avatar  = make_avatar(photo)                 # once per avatar (identity, its own pose)
    mouth   = mouth(mel windows, frame indices)  # B x 1 x 80 x 20 -> B x M
    pose    = pose(pose samples)                 # tracked camera / video frames -> B x P
    frames  = generate(avatar, mouth, pose)      # -> B x H x W x 3 uint8 crops

Each family's adapter implements it (`trtalk.families.pcavs.runtime.PCAVSFamily`: the PC-AVS
networks through a `trtalk.engine.Runner` on any backend; `trtalk.families.warp.runtime.WarpFamily`:
the warp avatar, no trained weights; `trtalk.families.pdfgc.runtime.PDFGCFamily`; a plugin's own)
and declares its `capabilities` (`trtalk.families.spec.Capabilities`), which front ends read.

Shared networks, per-stream state. A family object holds the networks (and what is derived from
them once: encoded control files, presets) and nothing that changes while frames are made: one
instance serves every stream of a process (every session of `trtalk serve`), with a lock where an
engine or CUDA graph is not re-entrant. What a stream changes (followers, smoothing, blinks, live
controls, frame counters, the per-stream code caches) lives in a `FamilyState` from
`new_state()`, one per stream, which every call that reads or changes it is given explicitly:

    state  = family.new_state()                          # per stream (`FamilyState.reset` restarts it)
    mouth  = family.mouth(state, mel, frames)
    pose   = family.pose(state, inputs)
    frames = family.synthesize(state, avatar, mel, frames, pose, camera)

Pose codes are what the pipeline smooths and holds when the face is lost, so each family says
what its avatar's own pose is (``Avatar.ref_pose``) and what to show with no pose source at all
(`still_pose`: the avatar's own pose for PC-AVS, the warp avatar's gentle built-in motion).

Generated motion (``--pose auto``, `trtalk.runtime.motion_path`) asks `motion_codes(avatar,
angles, eye_closure)`: the warp avatar uses the angles and the eye closure as they are; by default
a family maps the angles through the avatar's angle map (`prepare_motion`: the warp avatar renders
the photo through a grid of angles, `pose` encodes the renders; `trtalk.motion.posemap`, cached
by the photo and `weights_id`). A family with an eye input of its own (PD-FGC) ignores the eye
closure there: it hears the same mel windows in `mouth` and makes the same blink decisions
itself, so ``--eyes auto`` blinks with speech whatever the pose source (`configure_motion`).
"""

from __future__ import annotations

import abc
import collections
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trtalk.errors import TrtalkError
from trtalk.families.spec import Capabilities

log = logging.getLogger(__name__)

#: how a stream runs a network call ``fn`` of the shared family (`direct_call`: here and now;
#: `trtalk serve`: on its worker thread, where the batches run)
NetworkCall = Callable[[Callable[[], Any]], Any]


def direct_call(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on this thread (the `NetworkCall` of a stream that owns its thread's networks)."""
    return fn()


@dataclass
class Avatar:
    """One identity, prepared once: the photo, the family's crop of it and its encodings.

    ``crop_m`` maps photo pixels to the generated crop (paste-back); ``crop`` is the family's
    view of the photo (shown in the side-by-side layout); ``ref_pose`` is the avatar's own pose
    code (1-D); ``state`` is the family's per-avatar data (identity codes, the warp mesh).
    """

    image: np.ndarray
    crop: np.ndarray
    crop_m: np.ndarray
    ref_pose: torch.Tensor
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoseInput:
    """What a family may read from one tracked frame: the aligned 224 crop and the face mesh."""

    crop: np.ndarray | None
    mesh: np.ndarray | None


class FamilyState:
    """One stream's state in a family (see the module docstring): a family keeping some
    subclasses it. ``controls``: the stream's live controls (`trtalk.families.controls.Controls`)
    in a family with `Capabilities.live_controls`, else None; ``pose_encodings``: frames its pose
    encoder ran on (cache misses), for the stream report."""

    controls: Any = None

    @property
    def pose_encodings(self) -> int:
        return 0

    def reset(self) -> None:
        """Forget what the stream built up (followers, references, blinks) before it (re)starts."""


class ModelFamily(abc.ABC):
    """A network family behind the frame step (see the module docstring)."""

    name: str = ""
    #: what the family can do (its spec's, `trtalk.families.spec.Capabilities`)
    capabilities: Capabilities = Capabilities()
    #: side of the square frames `generate` returns (paste-back maps the photo to it)
    output_size: int = 224
    #: the angles `prepare_motion` renders (`trtalk.motion.posemap.GridSpec`; None: its default)
    motion_grid: Any = None

    @property
    def has_visual_mouth(self) -> bool:
        """Whether `visual_mouth` reads lips from tracked frames (``--mouth webcam|video|blend``)."""
        return self.capabilities.visual_mouth

    def __init__(self, random_weights: bool = False) -> None:
        self.random_weights = random_weights
        #: (checkpoint, options with ``seed`` and ``config``) the weights came from, set by
        #: `trtalk.runtime.options.open_family` (None: unknown, nothing is cached by them)
        self.weights_source: tuple[Any, Any] | None = None
        self._weights_id: str | None = None

    @abc.abstractmethod
    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        """The avatar of RGB ``image``; an aligned ``crop``/``crop_m``/``mesh`` skip re-detection."""

    @abc.abstractmethod
    def mouth(self, state: "FamilyState", mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Mouth codes B x M from mel windows B x 1 x 80 x 20 of video frames ``frames`` (in order)."""

    @abc.abstractmethod
    def pose(self, state: "FamilyState", inputs: Sequence[PoseInput]) -> torch.Tensor:
        """Pose codes B x P of tracked frames that have a face (in order)."""

    @abc.abstractmethod
    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        """Pose codes B x P when there is no pose source."""

    @abc.abstractmethod
    def generate(self, state: "FamilyState", avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor,
                 frames: Sequence[int] | None = None,
                 camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        """Frames B x H x W x 3 uint8 (H = W = `output_size`) of stream ``state``'s ``frames``
        (in order; None: the frames after the last ones it made); ``camera``: per frame, the tracked input its pose code was encoded from
        (None where the pose was held, or no pose source), for families that read more than the
        pose from it (PD-FGC's webcam eyes and emotion)."""

    def synthesize(self, state: "FamilyState", avatar: Avatar, mel: torch.Tensor, frames: Sequence[int],
                   pose: torch.Tensor, camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        """Mouth from the mel windows, then `generate`: what the frame step calls per batch."""
        return self.generate(state, avatar, self.mouth(state, mel, frames), pose, frames, camera)

    def new_state(self) -> "FamilyState":
        """A new stream's state (followers, smoothing, blinks, controls, counters); the networks
        stay this object's, shared. Default: `FamilyState` (a family that keeps none)."""
        return FamilyState()

    def frame_codes(self, state: "FamilyState", avatar: Avatar, frames: Sequence[int], pose: torch.Tensor,
                    camera: Sequence[PoseInput | None] | None = None) -> dict[str, torch.Tensor] | None:
        """Codes beyond mouth and pose that stream ``state``'s ``frames`` (in order) need, B rows
        each: a server hands them, a row per item, to `generate_many`. None (the default): the
        family has none."""
        return None

    # Per-stream settings of families that have them (`Capabilities.pose_factor`,
    # `Capabilities.live_controls`, centred mouth smoothing); the defaults do nothing.

    def set_factor(self, state: "FamilyState", factor: str, spec: Any) -> None:
        """Change stream ``state``'s source of ``factor`` (a `trtalk.families.controls.FactorSpec`)."""
        raise TrtalkError(f"the {self.name or type(self).__name__} model has no {factor} switch")

    def set_length(self, state: "FamilyState", n: int | None) -> None:
        """The number of output frames when known (offline)."""

    def set_lookahead(self, state: "FamilyState", fn: Callable[[int], Any]) -> None:
        """Offline: ``fn(k)`` -> frame k's mel window (1 x 80 x 20) or None past the end."""

    def configure_motion(self, state: "FamilyState", motion: Any = None, blink: Any = None,
                         avatar: Avatar | None = None) -> None:
        """The generated-motion settings (``--motion-*``, ``--blink-*``) for a family with blinks
        of its own; ``avatar``: the head moves by generated motion."""

    def mouth_many(self, states: Sequence["FamilyState"], mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Mouth codes B x M of items from possibly different streams (``states[i]`` is item i's;
        each stream's items in frame order): what a server batching several streams calls.
        Default: one `mouth` per stream."""
        out: list[torch.Tensor | None] = [None] * len(states)
        streams: dict[int, list[int]] = {}
        for i, st in enumerate(states):
            streams.setdefault(id(st), []).append(i)
        for idx in streams.values():
            codes = self.mouth(states[idx[0]], mel[idx], [frames[i] for i in idx])
            for i, c in zip(idx, codes):
                out[i] = c
        return torch.stack(out)  # type: ignore[arg-type]

    def generate_many(self, avatars: Sequence[Avatar], mouth: torch.Tensor, pose: torch.Tensor,
                      codes: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
        """Frames B x H x W x 3 uint8 of items from possibly different avatars (``avatars[i]`` is
        item i's): what a server batching several streams calls; ``codes``: each item's row of
        `frame_codes` (families that have them). Default: one `generate` per run of consecutive
        items of the same avatar."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(avatars):
            j = i + 1
            while j < len(avatars) and avatars[j] is avatars[i]:
                j += 1
            out.append(self.generate(self.new_state(), avatars[i], mouth[i:j], pose[i:j]))
            i = j
        return np.concatenate(out) if out else np.zeros((0, self.output_size, self.output_size, 3), np.uint8)

    # -- generated motion (`--pose auto`, `trtalk.runtime.motion_path`) -------------------------

    def weights_id(self) -> str | None:
        """What identifies this family's weights (a checkpoint's hash, or the random weights' seed
        and config, from `weights_source`) for caches keyed by them; None: unknown, nothing is
        cached. Hashed once, on first use."""
        if self._weights_id is None and self.weights_source is not None:
            self._weights_id = _weights_id(*self.weights_source)
        return self._weights_id

    def prepare_motion(self, avatar: Avatar) -> Any:
        """Build (or load from the cache) the avatar's angle -> pose code map
        (`trtalk.motion.posemap`): the warp avatar renders the photo through a grid of head
        angles, each frame is encoded by `pose`. Kept in ``avatar.state["angle_map"]``."""
        from trtalk.motion.posemap import GridSpec, build_angle_map

        amap = avatar.state.get("angle_map")
        if amap is None:
            state = self.new_state()  # the grid's renders are no stream's

            def encode(crops: Sequence[np.ndarray], meshes: Sequence[np.ndarray]) -> np.ndarray:
                out = [self.pose(state, [PoseInput(c, m) for c, m in zip(crops[i:i + 16], meshes[i:i + 16])])
                       for i in range(0, len(crops), 16)]
                return torch.cat(out).detach().float().cpu().numpy()

            amap = build_angle_map(avatar.image, encode, mesh=avatar.state.get("mesh"), family=self.name,
                                   weights_id=self.weights_id(), grid=self.motion_grid or GridSpec())
            avatar.state["angle_map"] = amap
        return amap

    def motion_codes(self, avatar: Avatar, angles: torch.Tensor,
                     eye_closure: torch.Tensor | None = None) -> torch.Tensor:
        """Pose codes B x P for generated head angles B x 3 (yaw, pitch, roll in degrees relative
        to the avatar photo, `trtalk.warp.mesh` convention) and eye closure B (0 open .. 1 shut;
        a family with an eye input uses it, the default ignores it). Default: the avatar's
        angle map (`prepare_motion`)."""
        amap = self.prepare_motion(avatar)
        return torch.from_numpy(amap(angles.detach().cpu().numpy()))

    # Lips from video frames (`trtalk.runtime.mouth_path`): optional, families without a visual
    # mouth refuse ``--mouth video/webcam/blend`` with a one-line error.

    def visual_mouth(self, state: "FamilyState", inputs: Sequence[PoseInput]) -> torch.Tensor:
        """Mouth codes B x M read from tracked frames (the same space as `mouth`'s)."""
        raise TrtalkError(f"the {self.name or type(self).__name__} model has no visual mouth; "
                          f"use --mouth audio")

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        """The mouth code (1-D) to ease to when the mouth's face is lost: the avatar's own."""
        raise TrtalkError(f"the {self.name or type(self).__name__} model has no visual mouth; "
                          f"use --mouth audio")

    def want_visual_mouth(self, state: "FamilyState", on: bool = True) -> None:
        """Hint that `visual_mouth` will be asked for the frames `pose` encodes (PC-AVS then gets
        both codes from one encoder pass)."""


def align_photo(image: np.ndarray, name: str, crop: np.ndarray | None = None, crop_m: np.ndarray | None = None,
                mesh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(aligned 224 crop, photo -> crop matrix, face mesh or None) of an avatar photo: the given
    ``crop``/``crop_m``/``mesh`` when there are both of the first two, else found in ``image``."""
    from trtalk.face import align_frames

    if crop is not None and crop_m is not None:
        return crop, crop_m, mesh
    clip = align_frames([image], name=name)
    if not bool(clip.found[0]):
        raise TrtalkError(f"no face found in {name}; use a photo with one clearly visible, frontal face")
    if mesh is None and clip.landmarks is not None:
        mesh = clip.landmarks[0]
    return clip.crops[0], clip.crop_matrices[0], mesh


class CropCodeCache:
    """Codes of aligned crops by content (blake2b of the pixels), LRU of ``size`` entries: a
    looping file or a still costs one encoding per distinct frame. ``encodings`` counts the crops
    encoded (cache misses)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._codes: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.encodings = 0

    def __len__(self) -> int:
        return len(self._codes)

    def __call__(self, crops: Sequence[np.ndarray], encode: Callable[[np.ndarray], Sequence[Any]],
                 usable: Callable[[Any], bool] | None = None) -> list[Any]:
        """The codes of ``crops`` (in order); ``encode(N x 224 x 224 x 3 crops)`` -> N codes is
        called once, for the crops not in the cache (or whose cached code is not ``usable``)."""
        keys = [hashlib.blake2b(c.tobytes(), digest_size=16).digest() for c in crops]
        todo = {k: c for k, c in zip(keys, crops)
                if k not in self._codes or (usable is not None and not usable(self._codes[k]))}
        if todo:
            codes = encode(np.stack(list(todo.values())))
            self.encodings += len(todo)
            for k, code in zip(todo, codes):
                self._codes[k] = code
        out = []
        for k in keys:
            self._codes.move_to_end(k)
            out.append(self._codes[k])
        while len(self._codes) > self.size:
            self._codes.popitem(last=False)
        return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W in [-1, 1] -> B x H x W x 3 uint8 (round half away from zero after scaling)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _weights_id(checkpoint: Path | str | None, options: Any) -> str:
    """sha256 of the checkpoint's files (a folder: every file, in name order), or the random
    weights' seed and model config; keys caches built from the weights (the angle map)."""
    if checkpoint is None:
        cfg = getattr(options, "config", None)
        conf = cfg.to_json() if cfg is not None else "official"
        return f"random-seed{getattr(options, 'seed', 0)}-" + hashlib.sha256(conf.encode()).hexdigest()[:16]
    root = Path(checkpoint)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
