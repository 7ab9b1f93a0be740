"""The warp avatar's runtime adapter: `trtalk.warp`'s renderer behind the frame step."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from trtalk.families.base import Avatar, FamilyState, ModelFamily, PoseInput
from trtalk.families.spec import Capabilities, OpenRequest



# Its network is a 256x256 grid_sample: one thread (60 ms per frame with 2 threads, 5 ms with 1,
# measured on 2 cores: more threads only compete with the numpy and mediapipe work).
CAPABILITIES = Capabilities(visual_mouth=True, checkpoint=False, needs_checkpoint=False, noise=(),
                            exportable=False, backends=("torch", "onnxruntime"), devices=("cpu",),
                            runner_options=False, shared_networks=False, threads=1, full_frame=True)


class WarpState(FamilyState):
    """A warp stream's mouth follower, head reference (rotation, placement) and lip meter."""

    def __init__(self, fps: float, mouth_cfg: Any) -> None:
        self.fps = fps
        self.mouth_cfg = mouth_cfg
        self.lips: Any = None
        self.reset()

    def reset(self) -> None:
        from trtalk.warp.drive import MeshRotation, MouthFollower
        from trtalk.warp.placement import HeadPlacement

        self.follower = MouthFollower(self.fps, self.mouth_cfg)
        self.rotation = MeshRotation()
        self.placement = HeadPlacement()
        if self.lips is not None:
            self.lips.reset()
        self.last_lips = np.zeros(2, np.float32)


class WarpFamily(ModelFamily):
    """The landmark-driven warp avatar (`trtalk.warp`): no weights, nothing downloaded.

    Mouth code = (open, rounding) after the attack/release follower; pose code = (yaw, pitch,
    roll) in degrees relative to the first tracked face, then (from a tracked pose source) eye
    closure 0 and the head's shift and log scale (`trtalk.warp.placement`); ``backend`` "torch"
    or "onnxruntime" runs the warp network; ``size``: the long side of the photo's frame (None:
    the photo's own, up to ``AvatarConfig.max_size``).
    """

    name = "warp"
    capabilities = CAPABILITIES

    def __init__(self, fps: float = 25.0, backend: str = "torch", config: Any = None,
                 size: int | None = None, onnx_path: str | None = None) -> None:
        super().__init__(random_weights=False)
        from dataclasses import replace

        from trtalk.warp.render import WarpRenderConfig

        self.cfg = config or WarpRenderConfig(fps=fps, backend=backend, onnx_path=onnx_path)
        if size is not None:  # --size: the long side of the photo's frame
            self.cfg = replace(self.cfg, avatar=replace(self.cfg.avatar, size=size))
        self.fps = fps
        self.output_size = self.cfg.avatar.size or self.cfg.avatar.max_size

    def new_state(self) -> WarpState:
        return WarpState(self.fps, self.cfg.mouth)

    def visual_mouth(self, state: WarpState, inputs: Sequence[PoseInput]) -> torch.Tensor:  # type: ignore[override]
        """(open, rounding) measured on the tracked face meshes' lips (`trtalk.warp.lips.LipMeter`)."""
        from trtalk.warp.lips import LipMeter

        if state.lips is None:
            state.lips = LipMeter()
        out = []
        for p in inputs:
            # A frame without a mesh (a clip frame whose face was filled in) keeps the last mouth.
            last = out[-1] if out else state.last_lips
            out.append(state.lips(p.mesh) if p.mesh is not None else last)
        if out:
            state.last_lips = out[-1]
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 2)

    def rest_mouth(self, avatar: Avatar) -> torch.Tensor:
        return torch.zeros(2)

    def make_avatar(self, image: np.ndarray, name: str, *, crop: np.ndarray | None = None,
                    crop_m: np.ndarray | None = None, mesh: np.ndarray | None = None) -> Avatar:
        from trtalk.warp.render import WarpRenderer

        renderer = WarpRenderer(image, self.cfg, name, mesh=mesh)
        av = renderer.avatar
        return Avatar(image, av.crop, av.crop_m, torch.zeros(7), {"renderer": renderer})

    def mouth(self, state: WarpState, mel: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        from trtalk.warp.drive import mouth_from_window

        windows = mel.detach().float().cpu().numpy()[:, 0].transpose(0, 2, 1)  # B x 20 x 80
        return torch.from_numpy(np.stack([state.follower.step(*mouth_from_window(w, self.cfg.mouth))
                                          for w in windows]))

    def pose(self, state: WarpState, inputs: Sequence[PoseInput]) -> torch.Tensor:  # type: ignore[override]
        return torch.from_numpy(np.stack([np.concatenate([state.rotation.update(p.mesh), [0.0],
                                                          state.placement.update(p.mesh)])
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

    def generate(self, state: FamilyState, avatar: Avatar, mouth: torch.Tensor, pose: torch.Tensor,
                 frames: Sequence[int] | None = None,
                 camera: Sequence[PoseInput | None] | None = None) -> np.ndarray:
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


def open_warp(request: OpenRequest) -> WarpFamily:
    """The warp avatar (its network on ``request.backend``: torch or onnxruntime, on the CPU);
    ``request.checkpoint`` may be a warp export folder (`trtalk export --model warp`), whose
    ``warp.onnx`` onnxruntime then runs."""
    onnx_path = None
    if request.checkpoint is not None:
        from trtalk.errors import TrtalkError
        from trtalk.families.warp.export import warp_graph

        if request.backend != "onnxruntime":
            raise TrtalkError("a warp export folder is its ONNX warp graph: run it with --backend "
                              "onnxruntime (or drop --checkpoint)")
        onnx_path = str(warp_graph(request.checkpoint))
    return WarpFamily(fps=request.fps, backend=request.backend, size=request.size, onnx_path=onnx_path)
