"""``deformation``: Deformation-Proxy (Kim, Dolz, Desrosiers, Jodoin; BMVC 2021).

The client's key is a seed. From it, a learned flow-field generator makes a pseudo-random,
smooth, invertible non-linear deformation (a stationary velocity field on a coarse control grid,
integrated by scaling and squaring; :class:`~privbench.nets.FlowGenerator`). The client sends
the deformed scan; the server's U-Net++ segments it; the client warps the returned probabilities
back with the inverse deformation (the negated velocity field). The generator and the server are
trained together to segment deformed scans while fooling a Siamese discriminator that tries to
tell whether two deformed scans are of one subject (:mod:`privbench.defenses.adversarial`).

Nothing in that game rewards the field's size: once the discriminator is at chance, the
segmentation loss alone pulls a free field towards the identity (quick runs collapsed to 0.1 mm
on two seeds of three). The paper's method section was not available to us, so privbench
chooses two safeguards, both on by default: each field's velocity is scaled to a set RMS length
(``deformation.displacement_mm``; 0 gives the free field), and the discriminator also sees a
scan beside its own proxy (``adversary.cross_pairs``, from the 2019 Privacy-Net code by the same
authors). Every run reports the displacement it applies (:meth:`DeformationProxy.encoding_measures`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from privbench.config import MAX_MM, RunConfig, require
from privbench.defenses.adversarial import AdversarialDefense, AdversaryConfig
from privbench.defenses.base import WhiteBox
from privbench.nets import FlowGenerator
from privbench.registry import register_defense
from privbench.tasks.base import REPEATED_SCANS

BRAIN = 0.05  # intensity above which a voxel counts as the head's, for the displacement's size


@dataclass
class DeformationConfig:
    """Deformation-Proxy (Kim et al., BMVC 2021): the client's flow-field generator."""

    displacement_mm: float = 4.0  # RMS length of each field's velocity at the control points (0: free to shrink)
    max_velocity_mm: float = 8.0  # bound of each velocity component; displacements stay within it
    control_spacing_mm: float = 16.0  # distance between the velocity field's control points
    noise_channels: int = 8  # Gaussian noise per control point, drawn from the key's seed
    generator_features: int = 32  # width of the generator's layers
    integration_steps: int = 7  # scaling-and-squaring steps (the field is split into 2^steps)

    PRESETS = {"test": {"generator_features": 8}}

    def validate(self, run: RunConfig) -> None:
        require((0 <= self.max_velocity_mm <= MAX_MM, f"deformation.max_velocity_mm must be in [0, {MAX_MM}]"),
                (0 <= self.displacement_mm <= self.max_velocity_mm,
                 "deformation.displacement_mm must be in [0, deformation.max_velocity_mm]"),
                (run.task.spacing <= self.control_spacing_mm <= MAX_MM,
                 f"deformation.control_spacing_mm must be in [task.spacing, {MAX_MM}]"),
                (min(self.noise_channels, self.generator_features, self.integration_steps) >= 1,
                 "deformation.noise_channels, generator_features and integration_steps must be >= 1"))


@dataclass(frozen=True)
class DeformationKey:
    """The client's secret for one request: the seed of the generator's noise."""

    seed: int


@register_defense("deformation", description="Deformation-Proxy: a pseudo-random invertible "
                  "deformation from a secret seed, learned adversarially; warped back on the client",
                  paper="Kim, Dolz, Desrosiers, Jodoin, BMVC 2021",
                  requires=(REPEATED_SCANS,),
                  config={"deformation": DeformationConfig, "adversary": AdversaryConfig},
                  published={"reid_f1": 0.122, "reid_map": 0.147, "dice_mean": 0.823})
class DeformationProxy(AdversarialDefense):
    """Flow-field generator on the client, U-Net++ on the server, Siamese discriminator in training."""

    name = "deformation"
    encoder: FlowGenerator

    def build_encoder(self, cfg: RunConfig, spacing: float) -> FlowGenerator:
        d = cfg.deformation
        return FlowGenerator(d.noise_channels, d.generator_features, max_velocity=d.max_velocity_mm / spacing,
                             spacing=max(1, round(d.control_spacing_mm / spacing)), steps=d.integration_steps,
                             rms=d.displacement_mm / spacing)

    def margin(self) -> int:
        """No displacement is longer than the velocity bound, so a patch pulls in at most that."""
        return math.ceil(self.encoder.max_velocity) + 1

    def encode_patches(self, images: torch.Tensor, labels: torch.Tensor,
                       iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch deformed by a fresh field over the patch and its margin, then cropped."""
        size, margin = tuple(images.shape[2:]), self.margin()
        draw = np.random.default_rng([self.seed, iteration, 2]).standard_normal(
            (len(images), self.encoder.noise_channels, *self.encoder.grid_shape(size)))
        displacement = self.encoder(torch.as_tensor(draw, dtype=torch.float32, device=images.device), size)
        inner = (..., *(slice(margin, n - margin) for n in size))
        proxies = self.encoder.warp(images, displacement)[inner]
        warped = self.encoder.warp(labels[:, None].float(), displacement, nearest=True)[inner]
        return proxies, warped[:, 0].round().long()

    def new_key(self, generator: torch.Generator | None = None) -> DeformationKey:
        return DeformationKey(int(torch.randint(0, 2**62, (), generator=generator)))

    @torch.no_grad()
    def displacement(self, key: DeformationKey, size: tuple[int, ...], inverse: bool = False) -> torch.Tensor:
        """The key's deformation (or its inverse) over a volume of ``size`` voxels, ``[1,3,*size]``."""
        self.encoder.eval()
        noise = torch.randn(1, self.encoder.noise_channels, *self.encoder.grid_shape(size),
                            generator=torch.Generator().manual_seed(key.seed))
        return self.encoder(noise.to(self.device), size, inverse)

    def encode(self, image: torch.Tensor, key: DeformationKey) -> torch.Tensor:
        """The deformed scan ``[B,1,D,H,W]``."""
        return self._warp(image, key, inverse=False).clamp(0, 1)

    def decode(self, server_output: torch.Tensor, key: DeformationKey) -> torch.Tensor:
        """The server's probabilities warped back with the inverse deformation."""
        return self._warp(server_output, key, inverse=True)

    def encoding_measures(self, image: torch.Tensor, key: DeformationKey) -> dict[str, float]:
        """The key's displacement over the brain (voxels brighter than ``BRAIN``), in mm: its mean
        and 95th percentile (a collapsed generator moves nothing)."""
        field = self.displacement(key, tuple(image.shape[2:]))[0].cpu()
        length = field.norm(dim=0)[image[0, 0] > BRAIN] * self.spacing
        if length.numel() == 0:
            return {}
        return {"displacement_mm_mean": float(length.mean()),
                "displacement_mm_p95": float(torch.quantile(length.float(), 0.95))}

    def white_box(self) -> "FlowWeights":
        return FlowWeights(self.encoder, self.device)

    @torch.no_grad()
    def _warp(self, volume: torch.Tensor, key: DeformationKey, inverse: bool) -> torch.Tensor:
        field = self.displacement(key, tuple(volume.shape[2:]), inverse)
        return self.encoder.warp(volume.to(self.device), field.expand(len(volume), *field.shape[1:])).cpu()


class FlowWeights(WhiteBox):
    """A copy of Deformation-Proxy's trained field generator: each volume warped by the field
    of fresh noise from the holder's generator (the key is that noise's seed)."""

    def __init__(self, generator_net: FlowGenerator, device: torch.device):
        self.net, self.device = copy.deepcopy(generator_net).eval(), device

    @torch.no_grad()
    def encode(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = tuple(volumes.shape[2:])
        noise = torch.randn(len(volumes), self.net.noise_channels, *self.net.grid_shape(size), generator=generator)
        field = self.net(noise.to(self.device), size)
        return self.net.warp(volumes.to(self.device), field).clamp(0, 1).cpu()
