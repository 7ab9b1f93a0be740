"""Model families: what the frame step needs from a network family, and the two trtalk has.

A family turns the step's inputs into frames:

    avatar  = make_avatar(photo)                 # once per avatar (identity, its own pose)
    mouth   = mouth(mel windows, frame indices)  # B x 1 x 80 x 20 -> B x M
    pose    = pose(pose samples)                 # tracked camera / video frames -> B x P
    frames  = generate(avatar, mouth, pose)      # -> B x H x W x 3 uint8 crops

- `PCAVSFamily`: the PC-AVS networks through a `trtalk.engine.Runner` (any backend): identity
  encoder, audio encoder + mouth embedding, pose encoder on the aligned 224 crop, the official
  style composition (`PCAVS.style`), the generator.
- `WarpFamily`: the built-in warp avatar (no trained weights): mouth opening and rounding from the
  same mel windows (attack/release follower), head rotation from the tracked face mesh relative to
  the first one, a dense warp of the photo.

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

log = logging.getLogger(__name__)

#: The model families a front end can ask for (``--model``).
FAMILIES = ("pcavs", "warp", "pdfgc")


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
    #: whether `visual_mouth` reads lips from tracked frames (``--mouth webcam|video|blend``)
    has_visual_mouth: bool = False
    #: side of the square frames `generate` returns (paste-back maps the photo to it)
    output_size: int = 224
    #: `generate` returns the avatar photo's own frame (the warp avatar), not a crop: there is
    #: nothing to paste back and ``--size`` is the family's own (`trtalk.warp.avatar.AvatarConfig`)
    full_frame: bool = False
    #: the angles `prepare_motion` renders (`trtalk.motion.posemap.GridSpec`; None: its default)
    motion_grid: Any = None

    def __init__(self, random_weights: bool = False) -> None:
        self.random_weights = random_weights
        #: (checkpoint, options with ``seed`` and ``config``) the weights came from, set by
        #: `open_family` (None: unknown, nothing is cached by them)
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


# ----------------------------------------------------------------------------- PC-AVS


class PCAVSFamily(ModelFamily):
    """PC-AVS over a runner (`trtalk.engine.Runner` or anything with its five methods).

    Pose codes are cached by crop content (``pose_cache`` entries, LRU): a looping file or a still
    costs one encoding per distinct frame.
    """

    name = "pcavs"
    has_visual_mouth = True
    output_size = 224

    def __init__(self, runner: Any, random_weights: bool | None = None, device: str = "cpu",
                 pose_cache: int = 256) -> None:
        if random_weights is None:
            random_weights = bool(getattr(runner, "random_weights", False))
        super().__init__(random_weights)
        self.runner = runner
        self.device = torch.device(device)
        #: per crop: (pose code, visual mouth code or None); the visual mouth codes come from the
        #: same encoder pass as the pose (--mouth video/webcam)
        self._pose_cache = CropCodeCache(pose_cache)
        self._with_mouth = False

    @property
    def pose_encodings(self) -> int:
        """Pose encoder calls' frames (cache misses), for the stream report."""
        return self._pose_cache.encodings

    def want_visual_mouth(self, on: bool = True) -> None:
        self._with_mouth = on

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        from trtalk.face import to_tensor

        crop, crop_m, mesh = align_photo(image, name, crop, crop_m, mesh)
        x = to_tensor(crop).to(self.device)
        id_vec, id_map = self.runner.encode_identity(x)
        ref_pose = self.runner.encode_pose(x)[0]
        return Avatar(image, crop, crop_m, ref_pose, {"id_vec": id_vec, "id_map": id_map, "mesh": mesh})

    def mouth(self, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        return self.runner.encode_audio(mel.to(self.device))

    def _encode(self, inputs: Sequence[PoseInput], mouth: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(pose code, visual mouth code or None) of ``inputs``' crops, from the cache or encoded;
        with ``mouth`` (or `want_visual_mouth`) one pose-encoder pass gives both together."""
        from trtalk.face import to_tensor

        mouth = mouth or self._with_mouth

        def encode(crops: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
            x = to_tensor(crops).to(self.device)
            if mouth:
                return list(zip(*self.runner.encode_pose_mouth(x)))
            return [(code, None) for code in self.runner.encode_pose(x)]

        return self._pose_cache([p.crop for p in inputs], encode, usable=lambda e: not mouth or e[1] is not None)

    def pose(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        return torch.stack([pose for pose, _ in self._encode(inputs, mouth=False)])

    def visual_mouth(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        """The pose encoder's visual mouth codes B x 500 of aligned crops (`Runner.encode_pose_mouth`;
        a crop whose pose was just encoded with `want_visual_mouth` costs nothing more)."""
        return torch.stack([mouth for _, mouth in self._encode(inputs, mouth=True)])

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        if "rest_mouth" not in avatar.state:
            avatar.state["rest_mouth"] = self.visual_mouth([PoseInput(avatar.crop, None)])[0]
        return avatar.state["rest_mouth"]

    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        return avatar.ref_pose.expand(len(frames), -1)

    def synthesize(self, avatar: Avatar, mel: torch.Tensor, frames: Sequence[int],
                   pose: torch.Tensor) -> np.ndarray:
        synth = getattr(self.runner, "synthesize", None)
        if synth is None:  # a bare runner (tests, a PCAVS module): mouth, then generate
            return super().synthesize(avatar, mel, frames, pose)
        b = mel.shape[0]
        id_vec, id_map = avatar.state["id_vec"], avatar.state["id_map"]
        with torch.no_grad():
            # One call: on a graphed runner, one CUDA graph replay for audio + style + generator.
            return to_uint8(synth(mel.to(self.device), pose.to(self.device, id_vec.dtype),
                                  id_vec.expand(b, -1), id_map.expand(b, -1, -1, -1)))

    def generate_many(self, avatars: Sequence[Avatar], mouth: torch.Tensor, pose: torch.Tensor,
                      codes: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
        """One style composition and one generator call for items of different avatars: the
        generator takes per-sample identity codes and feature maps."""
        from trtalk.models.pcavs import PCAVS

        id_vec = torch.cat([a.state["id_vec"] for a in avatars])
        id_map = torch.cat([a.state["id_map"] for a in avatars])
        style = PCAVS.style(id_vec, mouth, pose.to(mouth.device, mouth.dtype))
        with torch.no_grad():
            return to_uint8(self.runner.generate(style, id_map))

    def generate(self, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor) -> np.ndarray:
        from trtalk.models.pcavs import PCAVS

        b = mouth.shape[0]
        id_vec, id_map = avatar.state["id_vec"], avatar.state["id_map"]
        style = PCAVS.style(id_vec.expand(b, -1), mouth, pose.to(mouth.device, mouth.dtype))
        with torch.no_grad():
            return to_uint8(self.runner.generate(style, id_map.expand(b, -1, -1, -1)))


# ----------------------------------------------------------------------------- warp avatar


class WarpFamily(ModelFamily):
    """The landmark-driven warp avatar (`trtalk.warp`): no weights, nothing downloaded.

    Mouth code = (open, rounding) after the attack/release follower; pose code = (yaw, pitch,
    roll) in degrees relative to the first tracked face, then (from a tracked pose source) eye
    closure 0 and the head's shift and log scale (`trtalk.warp.placement`); ``backend`` "torch"
    or "onnxruntime" runs the warp network.
    """

    name = "warp"
    has_visual_mouth = True
    full_frame = True

    def __init__(self, fps: float = 25.0, backend: str = "torch", config: Any = None,
                 size: int | None = None) -> None:
        super().__init__(random_weights=False)
        from dataclasses import replace

        from trtalk.warp.render import WarpRenderConfig

        self.cfg = config or WarpRenderConfig(fps=fps, backend=backend)
        if size is not None:  # --size: the long side of the photo's frame
            self.cfg = replace(self.cfg, avatar=replace(self.cfg.avatar, size=size))
        self.fps = fps
        self.output_size = self.cfg.avatar.size or self.cfg.avatar.max_size
        self._renderers: dict[int, Any] = {}
        self.reset()

    def for_session(self) -> "WarpFamily":
        """A warp family with its own mouth follower and head reference (no weights to share)."""
        return WarpFamily(self.fps, config=self.cfg)

    def reset(self) -> None:
        from trtalk.warp.drive import MeshRotation, MouthFollower
        from trtalk.warp.placement import HeadPlacement

        self._follower = MouthFollower(self.fps, self.cfg.mouth)
        self._rotation = MeshRotation()
        self._placement = HeadPlacement()
        if getattr(self, "_lips", None) is not None:
            self._lips.reset()
        self._last_lips = np.zeros(2, np.float32)

    def visual_mouth(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        """(open, rounding) measured on the tracked face meshes' lips (`trtalk.runtime.mouth_path.LipMeter`)."""
        from trtalk.runtime.mouth_path import LipMeter

        if getattr(self, "_lips", None) is None:
            self._lips = LipMeter()
        out = []
        for p in inputs:
            # A frame without a mesh (a clip frame whose face was filled in) keeps the last mouth.
            last = out[-1] if out else getattr(self, "_last_lips", np.zeros(2, np.float32))
            out.append(self._lips(p.mesh) if p.mesh is not None else last)
        if out:
            self._last_lips = out[-1]
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 2)

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        return torch.zeros(2)

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        from trtalk.warp.render import WarpRenderer

        renderer = WarpRenderer(image, self.cfg, name, mesh=mesh)
        av = renderer.avatar
        return Avatar(image, av.crop, av.crop_M, torch.zeros(7), {"renderer": renderer})

    def mouth(self, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        from trtalk.warp.drive import mouth_from_window

        windows = mel.detach().float().cpu().numpy()[:, 0].transpose(0, 2, 1)  # B x 20 x 80
        return torch.from_numpy(np.stack([self._follower.step(*mouth_from_window(w, self.cfg.mouth))
                                          for w in windows]))

    def pose(self, inputs: Sequence[PoseInput]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.concatenate([self._rotation.update(p.mesh), [0.0],
                                                          self._placement.update(p.mesh)])
                                          for p in inputs])).float()

    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        from trtalk.warp.drive import idle_euler

        return torch.tensor([idle_euler(k / fps) for k in frames], dtype=torch.float32)

    def motion_codes(self, avatar: Avatar, angles: torch.Tensor,
                     eye_closure: torch.Tensor | None = None) -> torch.Tensor:
        """The angles themselves, and the eye closure as a fourth column (see `generate`)."""
        angles = angles.detach().float().cpu().reshape(-1, 3)
        if eye_closure is None:
            return angles
        return torch.cat([angles, eye_closure.detach().float().cpu().reshape(-1, 1)], dim=1)

    def generate(self, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor) -> np.ndarray:
        """Pose codes are (yaw, pitch, roll) degrees, optionally with eye closure in [0, 1] as a
        fourth column (generated motion with blinks) and the head's (dx, dy, log scale) as the
        fifth to seventh (a tracked pose source)."""
        from trtalk.warp import mesh as M

        renderer = avatar.state["renderer"]
        frames = [renderer.frame(float(m[0]), float(m[1]), M.euler_to_matrix(*map(float, p[:3])),
                                 float(p[3]) if len(p) > 3 else 0.0,
                                 tuple(map(float, p[4:7])) if len(p) >= 7 else None)
                  for m, p in zip(mouth, pose)]
        return np.stack(frames)


def open_family(model: str = "pcavs", checkpoint: Path | str | None = None, backend: str = "torch",
                device: str = "cpu", options: Any = None, *, fps: float = 25.0,
                pdfgc: dict[str, Any] | None = None, size: int | None = None) -> ModelFamily:
    """The family ``model`` ready to run: PC-AVS and PD-FGC through `trtalk.engine.open_runner`
    (PD-FGC: `trtalk.runtime.pdfgc_family`; ``pdfgc``: its factor sources), or the warp avatar (its
    network on torch or onnxruntime, on the CPU; ``size``: its frame's long side, None the
    photo's own up to 512; the crop families' ``--size`` is the frame step's)."""
    if model not in FAMILIES:
        raise TrtalkError(f"unknown model {model!r}; choose one of {', '.join(FAMILIES)}")
    if model == "pdfgc":
        from trtalk.runtime.pdfgc_family import open_pdfgc

        kw = dict(pdfgc or {})
        fam: ModelFamily = open_pdfgc(checkpoint, device, backend=backend, options=options, fps=fps, **kw)
        fam.weights_source = (checkpoint, options)  # keys its angle map (`--pose auto`)
        return fam
    if model == "warp":
        if checkpoint is not None:
            raise TrtalkError("the warp avatar has no checkpoint; drop --checkpoint or use --model pcavs")
        if backend not in ("torch", "onnxruntime"):
            raise TrtalkError(f"the warp avatar runs on torch or onnxruntime, not {backend}")
        if device != "cpu":
            raise TrtalkError("the warp avatar runs on the CPU (its warp is a few ms a frame); "
                              "drop --device or use --model pcavs")
        return WarpFamily(fps=fps, backend=backend, size=size)
    from trtalk.engine.runner import open_runner

    runner = open_runner(backend, checkpoint, device, options)
    family = PCAVSFamily(runner, device=device)
    family.weights_source = (checkpoint, options)
    return family


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
