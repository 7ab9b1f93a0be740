"""PC-AVS's five runtime stages as standalone modules with named, fixed I/O.

    identity:  image  B x 3 x 224 x 224           -> id_vector B x 2048, id_map B x 512 x 7 x 7
    pose:      image  B x 3 x 224 x 224           -> pose B x 12
    audio:     mel    B x 1 x 80 x 20             -> mouth B x 500   (1.2 weight + netE.mouth_embed inside)
    generator: style  B x 2560, id_map B x 512x7x7 -> image B x 3 x 224 x 224 in [-1, 1]
    pose_mouth: image B x 3 x 224 x 224           -> pose B x 12, mouth B x 500 (one FAN trunk pass:
               netE's head-pose and visual mouth branches; lips from a video or a webcam)

All tensors are NCHW (or B x D) float; "batch" is the one dynamic axis (`trtalk.models.stages`).
`shared_specs` are the stages PD-FGC shares with PC-AVS (identity, audio, generator).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trtalk.families.pcavs.model import ID_DIM, MOUTH_DIM, PCAVS
from trtalk.models.fuse import (FuseOptions, fuse_audio_encoder, fuse_generator,
                                fuse_identity_encoder, fuse_pose_encoder)
from trtalk.models.stages import BATCH, StageSpec, TensorSpec, fuse_options

STAGES = ("identity", "pose", "audio", "generator", "pose_mouth")


def shared_specs(crop_size: int, style_dim: int, dtype: str = "float32") -> dict[str, StageSpec]:
    """The stages both families share, by name: identity, audio (B x 500 mouth) and generator
    (``style_dim`` wide); plus ``"image"``, the B x 3 x crop x crop input of the image encoders,
    as a one-input spec for the family's own encoder stage."""
    img = (BATCH, 3, crop_size, crop_size)
    idmap = (BATCH, 512, 7, 7)

    def t(name: str, shape: tuple) -> TensorSpec:
        return TensorSpec(name, shape, dtype)

    return {
        "image": StageSpec("image", (t("image", img),), ()),
        "identity": StageSpec("identity", (t("image", img),),
                              (t("id_vector", (BATCH, ID_DIM)), t("id_map", idmap))),
        "audio": StageSpec("audio", (t("mel", (BATCH, 1, 80, 20)),), (t("mouth", (BATCH, MOUTH_DIM)),)),
        "generator": StageSpec("generator", (t("style", (BATCH, style_dim)), t("id_map", idmap)),
                               (t("image", img),)),
    }


def stage_specs(model: object, dtype: str = "float32") -> dict[str, StageSpec]:
    """I/O specs of PC-AVS's stages for ``model`` (a `PCAVS` or its config; ``dtype`` of every
    I/O tensor)."""
    c = getattr(model, "config", model)
    base = shared_specs(c.crop_size, c.style_dim, dtype)
    pose = TensorSpec("pose", (BATCH, c.pose_dim), dtype)
    return {"identity": base["identity"], "pose": StageSpec("pose", base["image"].inputs, (pose,)),
            "audio": base["audio"], "generator": base["generator"],
            "pose_mouth": StageSpec("pose_mouth", base["image"].inputs,
                                    (pose, TensorSpec("mouth", (BATCH, MOUTH_DIM), dtype)))}


class IdentityStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netV = model.netV

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vec, id_map = self.netV(image)
        return vec, id_map


class PoseStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netE = model.netE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.netE(image)


class PoseMouthStage(nn.Module):
    """netE's trunk once, then its head-pose and visual mouth branches (`PoseEncoder.pose_and_mouth`)."""

    def __init__(self, model: PCAVS):
        super().__init__()
        self.netE = model.netE

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pose, mouth = self.netE.pose_and_mouth(image)
        return pose, mouth


class AudioStage(nn.Module):
    """netA_sync, the 1.2 mouth weight and netE.mouth_embed: one graph = one runtime stage."""

    def __init__(self, model: PCAVS):
        super().__init__()
        self.netA_sync = model.netA_sync
        self.mouth_embed = model.netE.mouth_embed  # shared, not copied: only this part of netE
        self.weight = float(model.config.mouth_weight)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.mouth_embed(self.weight * self.netA_sync(mel))


class GeneratorStage(nn.Module):
    def __init__(self, model: PCAVS):
        super().__init__()
        self.netG = model.netG

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.netG(style, id_map)


_STAGE_CLASSES: dict[str, type[nn.Module]] = {
    "identity": IdentityStage, "pose": PoseStage, "audio": AudioStage, "generator": GeneratorStage,
    "pose_mouth": PoseMouthStage}


def _fuse_stage(mod: nn.Module, stage: str, options: FuseOptions) -> None:
    """Swap the stage's networks for their rewritten copies (`trtalk.models.fuse`)."""
    if stage == "identity":
        mod.netV = fuse_identity_encoder(mod.netV, options)
    elif stage in ("pose", "pose_mouth"):
        mod.netE = fuse_pose_encoder(mod.netE, options)
    elif stage == "audio":
        mod.netA_sync = fuse_audio_encoder(mod.netA_sync, options)
    else:
        mod.netG = fuse_generator(mod.netG, options)


def stage_module(model: object, stage: str, *, modconv: str = "decomposed",
                 noise_mode: str | None = None, copy_model: bool = True,
                 fuse: FuseOptions | bool | None = None) -> nn.Module:
    """The eval-mode module of ``stage``; positional inputs and outputs follow `stage_specs`.

    The generator is switched to ``modconv`` and ``noise_mode``. ``fuse`` picks the exact
    inference rewrites (blur folded into the upsampling convs, fixed skip/bilinear upsampling
    filters, BatchNorm folded; see `fuse_options`): by default all of them for the decomposed
    form, none for ``"grouped"``. With ``copy_model`` the stage works on a deep copy, so
    ``model`` itself is never changed (export may cast to fp16); rewritten networks are always
    new copies. ``noise_mode`` None is the checkpoint's fixed buffers.
    """
    if noise_mode is None:
        noise_mode = "fixed"
    assert isinstance(model, PCAVS)
    if stage not in _STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    mod = _STAGE_CLASSES[stage](model)
    if copy_model:
        mod = copy.deepcopy(mod)
    options = fuse_options(modconv, fuse)
    if options is not None:
        _fuse_stage(mod, stage, options)
    if stage == "generator":
        mod.netG.set_modconv_impl(modconv)
        mod.netG.noise_mode = noise_mode
    return mod.eval()


def stage_tensors(model: object, stage: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers ``stage`` computes with, by their names in its module (not copied)."""
    assert isinstance(model, PCAVS)
    if stage not in _STAGE_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    mod = _STAGE_CLASSES[stage](model)
    return {**dict(mod.named_parameters()), **dict(mod.named_buffers())}


# ------------------------------------------------------------------ all together


def fuse_for_inference(model: PCAVS, options: FuseOptions = FuseOptions()) -> PCAVS:
    """A copy of ``model`` with the rewrites of ``options``; ``model`` is left unchanged.

    The copy is for inference only (eval mode); load checkpoints into the original, then fuse.
    """
    out = PCAVS.__new__(PCAVS)  # not __init__: no throw-away random networks
    nn.Module.__init__(out)
    out.config = model.config
    out.netG = fuse_generator(model.netG, options)
    out.netV = fuse_identity_encoder(model.netV, options)
    out.netE = fuse_pose_encoder(model.netE, options)
    out.netA_sync = fuse_audio_encoder(model.netA_sync, options)
    return out.eval()
