"""ResNet image classifiers (He et al. 2015), torchvision's v1.5 layout.

Parameter and buffer names match torchvision's `resnet*` models (`conv1`, `layer1.0.bn2`,
`fc`, ...), so at width 64 a torchvision state dict loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from coserve.architectures.base import Decoded, ExpertModule, decode_scores

# Blocks per stage, as in torchvision. 10 is the common "tiny" variant used for cheap experts.
_STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# From 50 layers on, torchvision switches to bottleneck blocks to keep FLOPs down.
_BOTTLENECK_MIN_DEPTH = 50


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A projection when the residual's shape changes, else identity (None)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [N, C', H', W']
        out = self.relu(self.bn1(self.conv1(x)))  # [N, C', H', W']
        out = self.bn2(self.conv2(out))  # [N, C', H', W']
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        # Stride on the 3x3 rather than the first 1x1 (ResNet v1.5): better accuracy, and
        # what torchvision's weights expect.
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [N, 4C, H', W']
        out = self.relu(self.bn1(self.conv1(x)))  # [N, C, H, W]
        out = self.relu(self.bn2(self.conv2(out)))  # [N, C, H', W']
        out = self.bn3(self.conv3(out))  # [N, 4C, H', W']
        return self.relu(out + identity)


def _validate(depth: int, width: int, num_classes: int, in_channels: int) -> None:
    if depth not in _STAGE_DEPTHS:
        allowed = ", ".join(str(d) for d in _STAGE_DEPTHS)
        raise ValueError(f"ResNet depth must be one of {allowed}; got {depth!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"ResNet width must be a positive int (64 is standard); got {width!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"ResNet num_classes must be a positive int; got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f"ResNet in_channels must be a positive int (3 for RGB); got {in_channels!r}"
        )


class ResNetClassifier(ExpertModule):
    """ResNet-`depth` with `width` channels in the first stage, doubling per stage.

    Accepts any spatial size, since the head pools globally; multiples of 32 keep every
    stage's downsampling exact. Output: class logits `[N, num_classes]`.
    """

    def __init__(
        self, depth: int = 18, width: int = 64, num_classes: int = 2, in_channels: int = 3
    ) -> None:
        super().__init__()
        _validate(depth, width, num_classes, in_channels)
        self.num_labels = num_classes
        block = Bottleneck if depth >= _BOTTLENECK_MIN_DEPTH else BasicBlock

        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        stage_in = width
        stages = []
        for i, num_blocks in enumerate(_STAGE_DEPTHS[depth]):
            channels = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [block(stage_in, channels, stride)]
            stage_in = channels * block.expansion
            blocks += [block(stage_in, channels) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stage_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init; matters only for untrained experts (tests, benchmarks), where
        # it keeps activations from exploding through 100+ layers.
        if self.conv1.weight.is_meta:
            # Meta tensors hold no values, and normal_ on meta imports torch._dynamo (~1.4 s),
            # which would slow the loader's allocation-free weight-file checks.
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [N, W, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, 8W*e, H/32, W/32]
        x = torch.flatten(self.avgpool(x), 1)  # [N, 8W*e]
        return self.fc(x)  # [N, num_classes]

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        return decode_scores(out)
