"""PC-AVS identity encoder (`netV`, "resnext"): ResNeXt50 32x4d trunk + conv1x1 map + id classifier.

The trunk follows the torchvision ResNet layout and key names (``model.conv1``, ``model.layer1.0.
conv2`` ...), including its unused 1000-way ``model.fc``, because the official checkpoint holds
them. Output for a B x 3 x 224 x 224 image in [-1, 1]: the pooled 2048 vector and the 512 x 7 x 7
map (conv1x1 of the last stage, pooled to 7x7). ``fc`` (2048 -> num_classes) is kept, unused.

``small=True`` (the ``small`` test configs, random weights only): one block per stage and a
quarter of the widths (512 channels out), with a ``widen`` linear layer 512 -> 2048 so the
outputs keep their official shapes; about 40x fewer FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


#: the identity vector's width (the style's first 2048 entries)
ID_VECTOR = 2048


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 32,
                 base_width: int = 4, downsample: nn.Module | None = None):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt50Trunk(nn.Module):
    """torchvision-compatible ResNeXt50 32x4d (layers [3, 4, 6, 3])."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, base: int = 64):
        super().__init__()
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(base, layers[0], 1)
        self.layer2 = self._stage(2 * base, layers[1], 2)
        self.layer3 = self._stage(4 * base, layers[2], 2)
        self.layer4 = self._stage(8 * base, layers[3], 2)
        self.out_channels = 8 * base * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.out_channels, num_classes)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        down = None
        if stride != 1 or self.inplanes != out:
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(out))
        mods = [Bottleneck(self.inplanes, planes, stride, downsample=down)]
        self.inplanes = out
        mods += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage map, B x ``out_channels`` (official: 2048) x H/32 x W/32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class IdentityEncoder(nn.Module):
    """netV: ``forward(image B x 3 x 224 x 224) -> (id_vector B x 2048, id_map B x 512 x 7 x 7)``."""

    def __init__(self, num_classes: int = 5830, small: bool = False):
        super().__init__()
        self.model = ResNeXt50Trunk((1, 1, 1, 1), base=16) if small else ResNeXt50Trunk()
        width = self.model.out_channels
        self.conv1x1 = nn.Conv2d(width, 512, 1)
        self.fc = nn.Linear(width, num_classes)
        # small only: the narrow trunk's vector widened to the official 2048 (no official key)
        self.widen = nn.Linear(width, ID_VECTOR) if width != ID_VECTOR else None

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.model.features(image)
        vec = torch.flatten(self.model.avgpool(x), 1)
        if self.widen is not None:
            vec = self.widen(vec)
        id_map = F.adaptive_avg_pool2d(self.conv1x1(x), (7, 7))
        return vec, id_map
