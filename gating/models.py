"""CIFAR-style ResNets (He et al., 2016) shipped with the project.

``resnet20`` / ``resnet56``: a 3x3 stem conv, three stages of ``n`` basic
blocks at widths ``w, 2w, 4w`` (``w = 16`` by default; stride 2 at the start
of stages 2 and 3, with a 1x1 conv + BN projection shortcut), global average
pooling and a linear classifier. Input ``[N, 3, H, W]`` float, any ``H, W``
>= 4; output logits ``[N, num_classes]``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "MODEL_NAMES", "resnet20", "resnet56"]

MODEL_NAMES = ("resnet20", "resnet56")
"""Model constructors of this module, by the names ``gating.build`` and ``gating.load`` accept."""


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if blocks_per_stage < 1 or width < 1 or num_classes < 1:
            raise ValueError(
                f"CifarResNet needs positive blocks_per_stage, width and num_classes, got "
                f"{blocks_per_stage}, {width}, {num_classes}"
            )
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], width
        for index, channels in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20 for 32x32 images (3 blocks per stage, ~0.27 M parameters at width 16)."""
    return CifarResNet(3, num_classes, width)


def resnet56(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-56 for 32x32 images (9 blocks per stage, ~0.86 M parameters at width 16)."""
    return CifarResNet(9, num_classes, width)
