"""Shared network building blocks of the model families (`trtalk.families`): the modulated-conv
generator, the identity (ResNeXt), pose (FAN) and audio (ResNet-SE) encoders, the exact inference
rewrites (`fuse`), stage I/O (`stages`) and checkpoint reading (`weights`)."""

from trtalk.models.fan import PoseEncoder
from trtalk.models.generator import Generator
from trtalk.models.modconv import modulated_conv2d
from trtalk.models.resnet_se import AudioEncoder
from trtalk.models.resnext import IdentityEncoder

__all__ = ["Generator", "IdentityEncoder", "PoseEncoder", "AudioEncoder", "modulated_conv2d"]
