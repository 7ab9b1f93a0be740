"""PC-AVS pose encoder (`netE`, "fan"): FAN hourglass trunk -> 512 feature, plus its heads.

Inference uses ``to_headpose`` and ``headpose_embed`` (-> 12-d pose code) on the trunk feature
and ``mouth_embed`` (512 -> 500) on the audio feature. ``classifier``, ``to_mouth``, ``mouth_fc``
and ``headpose_fc`` are training heads; they are in the checkpoint and kept here, unused.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


#: the hourglass width and depth of the ``small`` test configs (official: 256, 4)
SMALL_FEATURES = 64
SMALL_DEPTH = 1


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation (BN, ReLU, conv) block with three branches concatenated (out/2, /4, /4)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout // 2)
        self.bn2 = nn.BatchNorm2d(cout // 2)
        self.conv2 = _conv3x3(cout // 2, cout // 4)
        self.bn3 = nn.BatchNorm2d(cout // 4)
        self.conv3 = _conv3x3(cout // 4, cout // 4)
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True),
                                            nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.conv1(F.relu(self.bn1(x)))
        o2 = self.conv2(F.relu(self.bn2(o1)))
        o3 = self.conv3(F.relu(self.bn3(o2)))
        res = x if self.downsample is None else self.downsample(x)
        return torch.cat((o1, o2, o3), 1) + res


class BilinearResize(nn.Module):
    """Bilinear resize to ``size`` with align_corners=False, the hourglass's upsampling (no weights)."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class HourGlass(nn.Module):
    """Recursive hourglass of ``depth`` levels on 256 channels (modules b1_L, b2_L, b2_plus_1, b3_L)."""

    def __init__(self, depth: int = 4, features: int = 256):
        super().__init__()
        self.depth = depth
        self.upsample = BilinearResize()
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            if level == 1:
                self.add_module("b2_plus_1", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return up1 + self.upsample(low, tuple(up1.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FANTrunk(nn.Module):
    """FAN with one hourglass; 68 heatmaps at 56x56 -> conv6 (stride 2) -> 28x28 -> fc -> 512.

    ``features``: the hourglass width (official 256; the stem is a quarter, then a half of it);
    ``depth``: the hourglass's levels (official 4). The ``small`` test configs use 64 and 1
    (`SMALL_FEATURES`, `SMALL_DEPTH`: about 20x fewer FLOPs and a third of the graph's nodes, same
    outputs)."""

    def __init__(self, features: int = 256, depth: int = 4):
        super().__init__()
        f = features
        self.conv1 = nn.Conv2d(3, f // 4, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(f // 4)
        self.conv2 = ConvBlock(f // 4, f // 2)
        self.conv3 = ConvBlock(f // 2, f // 2)
        self.conv4 = ConvBlock(f // 2, f)
        self.m0 = HourGlass(depth, f)
        self.top_m_0 = ConvBlock(f, f)
        self.conv_last0 = nn.Conv2d(f, f, 1)
        self.l0 = nn.Conv2d(f, 68, 1)
        self.bn_end0 = nn.BatchNorm2d(f)
        self.conv6 = nn.Conv2d(68, 1, 3, 2, 1)
        self.fc = nn.Linear(28 * 28, 512)
        self.bn5 = nn.BatchNorm2d(68)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = self.bn_end0(self.conv_last0(x))
        heat = self.l0(F.relu(x))
        x = self.conv6(F.relu(self.bn5(heat)))
        return self.fc(F.relu(x.flatten(1)))


def _mlp(dim: int = 512) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class PoseEncoder(nn.Module):
    """netE: ``forward(image B x 3 x 224 x 224) -> pose code B x 12``; ``embed_mouth`` for audio;
    ``pose_and_mouth`` for the pose code and the visual mouth code from one trunk pass."""

    def __init__(self, num_classes: int = 5830, pose_dim: int = 12, clip_len: int = 1,
                 small: bool = False):
        super().__init__()
        self.model = FANTrunk(SMALL_FEATURES, SMALL_DEPTH) if small else FANTrunk()
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes))
        self.to_mouth = _mlp()
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, 512 - pose_dim))
        self.mouth_fc = nn.Sequential(nn.ReLU(), nn.Linear(512 * clip_len, num_classes))
        self.to_headpose = _mlp()
        self.headpose_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, pose_dim))
        self.headpose_fc = nn.Sequential(nn.ReLU(), nn.Linear(pose_dim * clip_len, num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.headpose_embed(self.to_headpose(self.model(image)))

    def pose_and_mouth(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned frame B x 3 x 224 x 224 -> (pose code B x 12, visual mouth code B x 500).

        One pass of the FAN trunk feeds both heads, as in the official training composition
        (``merge_mouthpose(to_mouth(feature), to_headpose(feature))``); the visual mouth has no
        weight (the audio's 1.2 is an inference-time boost of the audio feature only)."""
        feature = self.model(image)
        return (self.headpose_embed(self.to_headpose(feature)),
                self.mouth_embed(self.to_mouth(feature)))

    def embed_mouth(self, audio_feature: torch.Tensor) -> torch.Tensor:
        """Audio feature (B x 512, already weighted) -> mouth code B x 500."""
        return self.mouth_embed(audio_feature)
