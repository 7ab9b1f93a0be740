"""PC-AVS's runtime adapter: the frame step's family over a runner (`trtalk.engine.Runner`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from trtalk.families.base import Avatar, CropCodeCache, FamilyState, ModelFamily, PoseInput, align_photo, to_uint8
from trtalk.families.spec import Capabilities, OpenRequest



CAPABILITIES = Capabilities(visual_mouth=True, checkpoint=True, needs_checkpoint=True,
                            noise=("fixed", "random", "zero"))


class PCAVSState(FamilyState):
    """A PC-AVS stream's pose codes by crop content (``pose_cache`` entries, LRU: a looping file
    or a still costs one encoding per distinct frame) and whether its lips are read too."""

    def __init__(self, pose_cache: int) -> None:
        #: per crop: (pose code, visual mouth code or None); the visual mouth codes come from the
        #: same encoder pass as the pose (--mouth video/webcam)
        self.cache = CropCodeCache(pose_cache)
        self.with_mouth = False

    @property
    def pose_encodings(self) -> int:
        return self.cache.encodings


class PCAVSFamily(ModelFamily):
    """PC-AVS over a runner (`trtalk.engine.Runner` or anything with its five methods); its
    streams' pose-code caches are their `PCAVSState`'s."""

    name = "pcavs"
    capabilities = CAPABILITIES
    output_size = 224

    def __init__(self, runner: Any, random_weights: bool | None = None, device: str = "cpu",
                 pose_cache: int = 256) -> None:
        if random_weights is None:
            random_weights = bool(getattr(runner, "random_weights", False))
        super().__init__(random_weights)
        self.runner = runner
        self.device = torch.device(device)
        self.pose_cache = pose_cache

    def new_state(self) -> PCAVSState:
        return PCAVSState(self.pose_cache)

    def want_visual_mouth(self, state: PCAVSState, on: bool = True) -> None:  # type: ignore[override]
        state.with_mouth = on

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        from trtalk.face import to_tensor

        crop, crop_m, mesh = align_photo(image, name, crop, crop_m, mesh)
        x = to_tensor(crop).to(self.device)
        id_vec, id_map = self.runner.encode_identity(x)
        ref_pose = self.runner.encode_pose(x)[0]
        return Avatar(image, crop, crop_m, ref_pose, {"id_vec": id_vec, "id_map": id_map, "mesh": mesh})

    def mouth(self, state: FamilyState, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        return self.runner.encode_audio(mel.to(self.device))

    def mouth_many(self, states: Sequence[FamilyState], mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """One audio-encoder call for items of every stream (the mouth keeps no state)."""
        return self.runner.encode_audio(mel.to(self.device))

    def _encode(self, state: PCAVSState, inputs: Sequence[PoseInput],
                mouth: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(pose code, visual mouth code or None) of ``inputs``' crops, from the stream's cache or
        encoded; with ``mouth`` (or `want_visual_mouth`) one pose-encoder pass gives both together."""
        from trtalk.face import to_tensor

        mouth = mouth or state.with_mouth

        def encode(crops: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
            x = to_tensor(crops).to(self.device)
            if mouth:
                return list(zip(*self.runner.encode_pose_mouth(x)))
            return [(code, None) for code in self.runner.encode_pose(x)]

        return state.cache([p.crop for p in inputs], encode, usable=lambda e: not mouth or e[1] is not None)

    def pose(self, state: PCAVSState, inputs: Sequence[PoseInput]) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([pose for pose, _ in self._encode(state, inputs, mouth=False)])

    def visual_mouth(self, state: PCAVSState, inputs: Sequence[PoseInput]) -> torch.Tensor:  # type: ignore[override]
        """The pose encoder's visual mouth codes B x 500 of aligned crops (`Runner.encode_pose_mouth`;
        a crop whose pose was just encoded with `want_visual_mouth` costs nothing more)."""
        return torch.stack([mouth for _, mouth in self._encode(state, inputs, mouth=True)])

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        if "rest_mouth" not in avatar.state:
            avatar.state["rest_mouth"] = self.visual_mouth(self.new_state(), [PoseInput(avatar.crop, None)])[0]
        return avatar.state["rest_mouth"]

    def still_pose(self, avatar: Avatar, frames: Sequence[int], fps: float) -> torch.Tensor:
        return avatar.ref_pose.expand(len(frames), -1)

    def synthesize(self, state: FamilyState, avatar: Avatar, mel: torch.Tensor, frames: Sequence[int],
                   pose: torch.Tensor, camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        synth = getattr(self.runner, "synthesize", None)
        if synth is None:  # a bare runner (tests, a PCAVS module): mouth, then generate
            return super().synthesize(state, avatar, mel, frames, pose, camera)
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
        from trtalk.families.pcavs.model import PCAVS

        id_vec = torch.cat([a.state["id_vec"] for a in avatars])
        id_map = torch.cat([a.state["id_map"] for a in avatars])
        style = PCAVS.style(id_vec, mouth, pose.to(mouth.device, mouth.dtype))
        with torch.no_grad():
            return to_uint8(self.runner.generate(style, id_map))

    def generate(self, state: FamilyState, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor,
                 frames: Sequence[int] | None = None,
                 camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
        from trtalk.families.pcavs.model import PCAVS

        b = mouth.shape[0]
        id_vec, id_map = avatar.state["id_vec"], avatar.state["id_map"]
        style = PCAVS.style(id_vec.expand(b, -1), mouth, pose.to(mouth.device, mouth.dtype))
        with torch.no_grad():
            return to_uint8(self.runner.generate(style, id_map.expand(b, -1, -1, -1)))


def open_pcavs(request: OpenRequest) -> PCAVSFamily:
    """PC-AVS with its networks from ``request.make_runner`` (`trtalk.engine.open_runner`)."""
    runner = request.make_runner(request.backend, request.checkpoint, request.device, request.runner_options)
    return PCAVSFamily(runner, device=request.device)
