"""U-Net decoder of CYWS: 5 blocks, channels (256, 256, 128, 128, 64), nearest ×2 upsampling, skip
concatenation and (switchable) scSE attention with reduction 16.

Block i: upsample ×2 → concat skip (if any) → scSE on the concatenation → 3×3 conv-BN-ReLU
→ 3×3 conv-BN-ReLU → scSE on the output. The last block has no skip and no scSE at all, neither on
its input nor on its output: that is the layout of the authors' published checkpoint, so it loads
strictly and computes the same function. The output has 64 channels at full resolution; with
`output_stride=2` the last block is not built and the output is the 4th block's, at half resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018), reduction 16."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scse: bool) -> None:
        super().__init__()
        cat = in_channels + skip_channels
        self.attention1 = SCSE(cat) if (scse and skip_channels > 0) else nn.Identity()
        self.conv1 = conv_bn_relu(cat, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)
        # A block without a skip (the last one) has no scSE at all, as in the published model.
        self.attention2 = SCSE(out_channels) if (scse and skip_channels > 0) else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """Decode 5 feature maps (shallowest first, strides 2..32) to 64 channels at stride 1."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (256, 256, 128, 128, 64),
        scse: bool = True,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError("UnetDecoder expects 5 encoder maps and 5 decoder widths")
        enc = list(encoder_channels)[::-1]  # deepest first
        in_channels = [enc[0]] + list(decoder_channels[:-1])
        skip_channels = enc[1:] + [0]
        if output_stride not in (1, 2):
            raise ValueError("UnetDecoder's output_stride is 1 or 2")
        n = 5 if output_stride == 1 else 4
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, scse)
            for i, s, o in list(zip(in_channels, skip_channels, decoder_channels))[:n]
        )
        self.out_channels = decoder_channels[n - 1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = list(features)[::-1]
        x = feats[0]
        skips = (feats[1:] + [None])[: len(self.blocks)]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x
