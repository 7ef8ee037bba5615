"""Network factories built on MONAI's modules."""

from __future__ import annotations

import contextlib
import io

import torch
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn


class SegmentationNet(nn.Module):
    """MONAI's 3D U-Net++ (``BasicUNetPlusPlus``) returning one logits tensor ``[B,C,D,H,W]``.

    MONAI's module prints its feature widths when built and returns a list of outputs (for
    deep supervision); this wrapper silences the print and returns the final output only.
    Inputs must have spatial sizes divisible by 16.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = BasicUNetPlusPlus(spatial_dims=3, in_channels=in_channels,
                                         out_channels=num_classes, features=tuple(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]
