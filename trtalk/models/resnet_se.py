"""PC-AVS audio encoder (`netA_sync`, "ressesync"): ResNet-SE on a 1 x 80 x 20 mel window.

SE basic blocks with layers [3, 4, 6, 3] and filters [32, 64, 128, 256], self-attentive pooling
(SAP) over time, a 512-d output (``model.fc``), and the unused speaker classifier ``fc``.
As in the official code, ReLU comes *before* BatchNorm after the first conv and after each
block's first conv. The ``small`` test configs use one block per stage and a quarter of the
filters (`SMALL`), same output and key names.
"""

from __future__ import annotations

import torch
from torch import nn


#: (layers, filters) of the ``small`` test configs' trunk
SMALL = ((1, 1, 1, 1), (8, 16, 32, 64))


class SELayer(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class SEBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class ResNetSE(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3),
                 filters: tuple[int, ...] = (32, 64, 128, 256), n_out: int = 512,
                 n_mels: int = 80, n_mel_t: int = 1):
        super().__init__()
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(1, filters[0], 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.layer1 = self._stage(filters[0], layers[0], 1)
        self.layer2 = self._stage(filters[1], layers[1], 2)
        self.layer3 = self._stage(filters[2], layers[2], 2)
        self.layer4 = self._stage(filters[3], layers[3], 2)
        att = filters[3] * int(n_mels * n_mel_t / 8)
        self.attention = nn.Sequential(nn.Conv1d(att, 128, 1), nn.ReLU(), nn.BatchNorm1d(128),
                                       nn.Conv1d(128, att, 1), nn.Softmax(dim=2))
        self.fc = nn.Linear(att, n_out)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes))
        mods = [SEBasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        mods += [SEBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.relu(self.conv1(mel)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # B x (C*F') x T'
        x = (x * self.attention(x)).sum(2)
        return self.fc(x)


class AudioEncoder(nn.Module):
    """netA_sync: ``forward(mel B x 1 x 80 x 20) -> audio feature B x 512`` (before the 1.2 weight)."""

    def __init__(self, num_classes: int = 5830, small: bool = False):
        super().__init__()
        self.model = ResNetSE(*SMALL) if small else ResNetSE()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model(mel)
