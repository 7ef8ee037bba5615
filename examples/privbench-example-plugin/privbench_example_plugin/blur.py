"""``blur``: the client sends its scan blurred by a Gaussian of ``blur.sigma_mm``.

The server's U-Net++ is trained on, and segments, blurred scans; there is no key, and the
server's answer is the client's segmentation. Everything else (the network, the training loop,
checkpoints and restoring, the sliding window) is the no-proxy baseline's, through the
trained-defense base: the defense adds a config, a ``prepare`` hook and a wrapped step. Training blurs each patch on its own, so voxels
within about three sigma of a patch's border see zero padding, unlike whole scans at inference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from monai.networks.layers import GaussianFilter

from privbench import engine
from privbench.config import MAX_MM, RunConfig, require
from privbench.defenses.base import Key
from privbench.defenses.none import NoProxy
from privbench.registry import register_defense
from privbench.tasks.base import Task


@dataclass
class BlurConfig:
    """How much the client blurs its scan."""

    sigma_mm: float = 3.0  # standard deviation of the Gaussian, in millimetres (0: no blur)

    PRESETS = {"test": {"sigma_mm": 4.0}}  # one voxel of the test preset's 4 mm scans

    def validate(self, run: RunConfig) -> None:
        require((0 <= self.sigma_mm <= MAX_MM, f"blur.sigma_mm must be in [0, {MAX_MM}]"))


@register_defense("blur", description="Blur: the client sends its scan blurred by a Gaussian of blur.sigma_mm",
                  paper="privbench example plugin", config=BlurConfig)
class Blur(NoProxy):
    """A U-Net++ that segments Gaussian-blurred scans."""

    name = "blur"

    def prepare(self, task: Task, cfg: RunConfig) -> None:
        """The client's Gaussian, in voxels of the task's scans."""
        sigma = cfg.blur.sigma_mm / task.spacing
        self.smooth = GaussianFilter(3, sigma) if sigma > 0 else torch.nn.Identity()

    def build(self, cfg: RunConfig) -> engine.Step:
        """The baseline's network and step, trained on blurred patches."""
        plain = super().build(cfg)

        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            return plain(dataclasses.replace(batch, image=self.encode(batch.image, None)), iteration)

        return step

    @torch.no_grad()
    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        """The blurred scan ``[B,1,D,H,W]``: what leaves the hospital."""
        return self.smooth.to(image.device)(image.float()).to(image.dtype)
