"""Network factories built on MONAI's modules."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import torch
from monai.networks.blocks import DVF2DDF, Warp
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus
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


class EncoderNet(nn.Module):
    """Privacy-Net's encoder: MONAI's 3D U-Net (``BasicUNet``) from an image ``[B,1,D,H,W]`` to
    a one-channel image of the same size in [0, 1] (sigmoid), the proxy the server receives.
    Spatial sizes must be divisible by 16."""

    def __init__(self, features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=tuple(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


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
    """Is a pair of co-located patches from one subject? A 3D CNN embeds each patch; the pair's
    logit is a learned affine function of their embeddings' cosine similarity.

    The embedding is the last feature map itself (no global pooling), each channel centred over
    space, flattened and L2-normalised: the cosine then compares where the anatomy is, which is
    what tells two subjects apart and carries over to subjects never seen in training. Adam moves
    each parameter by about the learning rate per step, whatever its size; the logit's scale and
    bias are stored divided by ``CALIBRATION_GAIN`` so that they keep up with the embedding
    (otherwise the bias alone takes hundreds of steps to reach the cosines' threshold).

    Shared by Privacy-Net and Deformation-Proxy, whose encoders are trained to fool it. Patches
    must be divisible by ``2 ** len(features)``.
    """

    CALIBRATION_GAIN = 30.0

    def __init__(self, features: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((1, *features[:-1]), features):
            layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True),
                       nn.LeakyReLU(0.1), nn.MaxPool3d(2)]
        self.body = nn.Sequential(*layers)
        self.calibration = nn.Parameter(torch.tensor([5.0, 0.0]) / self.CALIBRATION_GAIN)  # scale, bias

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length identity embeddings ``[B,E]`` of patches ``[B,1,p,p,p]``."""
        maps = self.body(x)
        maps = maps - maps.mean(dim=(2, 3, 4), keepdim=True)
        return nn.functional.normalize(maps.flatten(1), dim=1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of "same subject" for the pairs (first[i], second[i])."""
        scale, bias = self.CALIBRATION_GAIN * self.calibration
        cosine = (self.embed(first) * self.embed(second)).sum(1)
        return scale * cosine + bias


class FlowGenerator(nn.Module):
    """Deformation-Proxy's flow-field generator: Gaussian noise on a coarse control grid ->
    a bounded stationary velocity field -> a diffeomorphic displacement field.

    A small convolutional network over the control grid (1, 3 and 1 voxels wide) maps the noise
    ``[B,c,n1,n2,n3]`` to a velocity of at most ``max_velocity`` voxels per axis (its centred
    output, scaled to a set RMS length or through a tanh; :meth:`velocity`) at each control point; trilinear interpolation spreads it over the voxels
    between control points ``spacing`` voxels apart (a smooth field); scaling and squaring
    (MONAI's ``DVF2DDF``) integrates it into a displacement. The velocity's negation integrates
    into the inverse deformation. Displacements are in voxels, ``[B,3,D,H,W]``, as MONAI's
    ``Warp`` takes them; :meth:`warp` applies one to volumes.
    """

    DEGENERATE = 1e-4  # voxels: a centred field this small is rounding error of a constant one

    def __init__(self, noise_channels: int = 8, features: int = 32, max_velocity: float = 4.0,
                 spacing: int = 8, steps: int = 7, rms: float = 0.0):
        super().__init__()
        self.noise_channels, self.max_velocity, self.spacing = noise_channels, max_velocity, spacing
        self.rms = rms
        self.body = nn.Sequential(nn.Conv3d(noise_channels, features, 1), nn.LeakyReLU(0.1),
                                  nn.Conv3d(features, features, 3, padding=1, padding_mode="replicate"),
                                  nn.LeakyReLU(0.1),
                                  nn.Conv3d(features, 3, 1))
        with warnings.catch_warnings():  # MONAI warns that it uses torch's grid_sample
            warnings.simplefilter("ignore")
            self.integrate = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")
            self.resample = Warp(mode="bilinear", padding_mode="border")
            self.resample_nearest = Warp(mode="nearest", padding_mode="border")

    def grid_shape(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Control points covering a volume of ``size`` voxels."""
        return tuple(math.ceil((n - 1) / self.spacing) + 1 for n in size)

    def velocity(self, noise: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """The velocity field ``[B,3,*size]`` (voxels) of control-point noise. The network's output
        is centred over the control grid before the tanh: a field that does not follow the noise
        would be the same for every key, and a uniform one is a translation, which an attacker
        undoes by aligning the scans. With ``rms`` > 0, each field is scaled so that the RMS
        length of its control-point velocities is ``rms`` voxels (then clamped to ``max_velocity``
        per axis): training shapes the field but cannot shrink it to the identity. Otherwise
        the velocity is ``max_velocity * tanh(.)``, free to shrink."""
        raw = self.body(noise)
        centred = raw - raw.mean(dim=(2, 3, 4), keepdim=True)
        if self.rms > 0:  # a field below DEGENERATE voxels ignores its key: left at zero, not blown up
            length = centred.pow(2).sum(1, keepdim=True).mean(dim=(2, 3, 4), keepdim=True).sqrt()
            scale = torch.where(length > self.DEGENERATE, self.rms / length.clamp(min=self.DEGENERATE), 0.0)
            control = (centred * scale).clamp(-self.max_velocity, self.max_velocity)
        else:
            control = self.max_velocity * torch.tanh(centred)
        dense = nn.functional.interpolate(control, size=[(n - 1) * self.spacing + 1 for n in control.shape[2:]],
                                          mode="trilinear", align_corners=True)
        return dense[(..., *(slice(0, n) for n in size))]

    def forward(self, noise: torch.Tensor, size: tuple[int, ...], inverse: bool = False) -> torch.Tensor:
        """Displacement ``[B,3,*size]`` of the deformation (or of its inverse), in float32 even
        under autocast: the inverse is only as exact as the fields."""
        with torch.autocast(noise.device.type, enabled=False):
            velocity = self.velocity(noise.float(), size)
            return self.integrate(-velocity if inverse else velocity)

    def warp(self, volume: torch.Tensor, displacement: torch.Tensor, nearest: bool = False) -> torch.Tensor:
        """``volume`` ``[B,C,*size]`` resampled at ``x + displacement(x)`` (trilinear, or nearest
        for label maps), the border value outside; float32 even under autocast."""
        with torch.autocast(volume.device.type, enabled=False):
            return (self.resample_nearest if nearest else self.resample)(volume.float(), displacement.float())
