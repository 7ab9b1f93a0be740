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


class ModelFamily(abc.ABC):
    """A network family behind the frame step (see the module docstring)."""

    name: str = ""
    #: what the family can do (its spec's, `trtalk.families.spec.Capabilities`)
    capabilities: Capabilities = Capabilities()
    #: side of the square frames `generate` returns (paste-back maps the photo to it)
    output_size: int = 224
    #: `generate` returns the avatar photo's own frame (the warp avatar), not a crop: there is
    #: nothing to paste back and ``--size`` is the family's own (`trtalk.warp.avatar.AvatarConfig`)
    full_frame: bool = False
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
    def mouth(self, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Mouth codes B x M from mel windows B x 1 x 80 x 20 of video frames ``frames`` (in order)."""

    @abc.abstractmethod
    def pose(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        """Pose codes B x P of tracked frames that have a face (in order)."""

    @abc.abstractmethod
    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        """Pose codes B x P when there is no pose source."""

    @abc.abstractmethod
    def generate(self, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor) -> np.ndarray:
        """Frames B x H x W x 3 uint8 (H = W = `output_size`)."""

    def synthesize(self, avatar: Avatar, mel: torch.Tensor, frames: Sequence[int],
                   pose: torch.Tensor) -> np.ndarray:
        """Mouth from the mel windows, then `generate`: what the frame step calls per batch."""
        return self.generate(avatar, self.mouth(mel, frames), pose)

    def reset(self) -> None:
        """Forget per-stream state (followers, pose references) before a new stream."""

    def for_session(self) -> "ModelFamily":
        """A family for one more concurrent stream: it shares the networks but not the per-stream
        state (followers, pose references). Default: this family (it keeps none)."""
        return self

    def frame_codes(self, avatar: Avatar, frames: Sequence[int],
                    pose: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Codes beyond mouth and pose that this stream's ``frames`` (in order) need, B rows each,
        from this per-stream family (`for_session`): a server hands them, a row per item, to
        `generate_many` of its own family. None (the default): the family has none."""
        return None

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
            out.append(self.generate(avatars[i], mouth[i:j], pose[i:j]))
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
            def encode(crops: Sequence[np.ndarray], meshes: Sequence[np.ndarray]) -> np.ndarray:
                out = [self.pose([PoseInput(c, m) for c, m in zip(crops[i:i + 16], meshes[i:i + 16])])
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

    def visual_mouth(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        """Mouth codes B x M read from tracked frames (the same space as `mouth`'s)."""
        raise TrtalkError(f"the {self.name or type(self).__name__} model has no visual mouth; "
                          f"use --mouth audio")

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        """The mouth code (1-D) to ease to when the mouth's face is lost: the avatar's own."""
        raise TrtalkError(f"the {self.name or type(self).__name__} model has no visual mouth; "
                          f"use --mouth audio")

    def want_visual_mouth(self, on: bool = True) -> None:
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
