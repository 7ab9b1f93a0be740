"""PyTorch networks of the PC-AVS family and their checkpoints."""

from trtalk.models.checkpoint import checkpoint_hash, convert, load_pcavs, save_official_folder
from trtalk.models.fan import PoseEncoder
from trtalk.models.generator import Generator
from trtalk.models.modconv import modulated_conv2d
from trtalk.models.pcavs import PCAVS, PCAVSConfig
from trtalk.models.resnet_se import AudioEncoder
from trtalk.models.resnext import IdentityEncoder

__all__ = ["PCAVS", "PCAVSConfig", "Generator", "IdentityEncoder", "PoseEncoder", "AudioEncoder",
           "modulated_conv2d", "load_pcavs", "convert", "save_official_folder", "checkpoint_hash"]
