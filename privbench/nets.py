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


class AdaIN3d(nn.Module):
    """Instance normalisation whose scale and shift are predicted from a scalar condition.

    Used by the unmixing network, conditioned on the mixing weight ``a``: the statistics are
    normalised per channel and volume, then ``(1 + gamma(a)) * x + beta(a)``. The predictor's
    last layer starts at zero, so an untrained AdaIN is plain instance normalisation.
    """

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.predict = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.predict[-1].weight)
        nn.init.zeros_(self.predict[-1].bias)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.predict(a.reshape(-1, 1).to(x.dtype)).chunk(2, dim=1)
        shape = (x.shape[0], x.shape[1], 1, 1, 1)
        return (1 + gamma.reshape(shape)) * self.norm(x) + beta.reshape(shape)


class _AdaINBlock(nn.Module):
    """3x3x3 convolution -> AdaIN(a) -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm = AdaIN3d(out_channels)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x), a))


class UnmixingNet(nn.Module):
    """Mixup-Privacy's learned unmixing ``D(y_mix, y_ref, a)``: a small U-Net of four conv blocks
    (two at full resolution, two at half) whose normalisation layers are AdaIN conditioned on the
    mixing weight ``a``. Inputs are the server's mixed probabilities and the reference's one-hot
    label ``[B,C,D,H,W]`` and ``a`` ``[B]``; output is logits ``[B,C,D,H,W]`` for the target.
    Spatial sizes must be even.
    """

    def __init__(self, num_classes: int, features: int = 16):
        super().__init__()
        f = features
        self.enc1 = _AdaINBlock(2 * num_classes, f)
        self.enc2 = _AdaINBlock(f, 2 * f)
        self.dec2 = _AdaINBlock(2 * f, 2 * f)
        self.dec1 = _AdaINBlock(3 * f, f)
        self.head = nn.Conv3d(f, num_classes, 1)

    def forward(self, y_mix: torch.Tensor, y_ref: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(torch.cat([y_mix, y_ref], dim=1), a)
        deep = self.dec2(self.enc2(nn.functional.max_pool3d(skip, 2), a), a)
        up = nn.functional.interpolate(deep, size=skip.shape[2:], mode="nearest")
        return self.head(self.dec1(torch.cat([up, skip], dim=1), a))


class ScoreNet(nn.Module):
    """NCSNv2-style score model: a U-Net++ whose output is divided by the noise level,
    ``s(x, sigma) = U(x) / sigma`` (Song & Ermon, 2020), estimating grad log p_sigma(x)."""

    def __init__(self, features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)):
        super().__init__()
        self.net = SegmentationNet(1, 1, features)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1)
        return self.net(x) / sigma


class SiameseDiscriminator(nn.Module):
    """Is a pair of co-located patches from one subject? A 3D CNN embeds each patch
    (L2-normalised); the pair's logit is a learned affine function of their cosine similarity.

    Shared by Privacy-Net and Deformation-Proxy, whose encoders are trained to fool it.
    """

    def __init__(self, features: tuple[int, ...] = (8, 16, 32, 64), embedding: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((1, *features[:-1]), features):
            layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True),
                       nn.LeakyReLU(0.1), nn.MaxPool3d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                  nn.Linear(features[-1], embedding))
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length identity embeddings ``[B,E]`` of patches ``[B,1,p,p,p]``."""
        return nn.functional.normalize(self.body(x), dim=1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of "same subject" for the pairs (first[i], second[i])."""
        cosine = (self.embed(first) * self.embed(second)).sum(1)
        return self.scale * cosine + self.bias
