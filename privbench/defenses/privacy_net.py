"""``privacy-net``: Privacy-Net (Kim, Dolz, Jodoin, Desrosiers; IEEE TMI 2021).

The client runs an encoder ``E`` (a 3D U-Net with a one-channel sigmoid output of the input's
size) and sends ``E(x)``; the server's U-Net++ ``S`` returns the segmentation of ``E(x)``, which
is not encoded, so the client uses it as it is. ``E`` and ``S`` are trained together to segment
while fooling a Siamese discriminator that tries to tell whether two encoded scans are of one
subject (:mod:`privbench.defenses.adversarial`). There is no key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from privbench import engine
from privbench.config import EvalConfig, RunConfig, require
from privbench.defenses.adversarial import AdversarialDefense, AdversaryConfig
from privbench.defenses.base import Key, WhiteBox
from privbench.nets import EncoderNet
from privbench.registry import register_defense
from privbench.tasks.base import REPEATED_SCANS


@dataclass
class PrivacyNetConfig:
    """Privacy-Net (Kim et al., IEEE TMI 2021): the client's encoder."""

    encoder_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)  # the encoder U-Net's widths (MONAI BasicUNet)

    PRESETS = {"test": {"encoder_features": (4, 4, 8, 8, 16, 4)},
               "paper": {"encoder_features": (32, 32, 64, 128, 256, 32)}}

    def validate(self, run: RunConfig) -> None:
        require((len(self.encoder_features) == 6 and min(self.encoder_features) >= 1,
                 "privacy_net.encoder_features must be 6 positive ints (BasicUNet)"))


@register_defense("privacy-net", description="Privacy-Net: an adversarially trained encoder hides "
                  "identity; the server segments the encoded scan",
                  paper="Kim, Dolz, Jodoin, Desrosiers, IEEE TMI 2021",
                  requires=(REPEATED_SCANS,),
                  config={"privacy_net": PrivacyNetConfig, "adversary": AdversaryConfig},
                  published={"reid_f1": 0.092, "reid_map": 0.202, "dice_mean": 0.813})
class PrivacyNet(AdversarialDefense):
    """Encoder U-Net on the client, U-Net++ on the server, Siamese discriminator in training."""

    name = "privacy-net"

    def build_encoder(self, cfg: RunConfig, spacing: float) -> torch.nn.Module:
        return EncoderNet(cfg.privacy_net.encoder_features)

    def encode_patches(self, images: torch.Tensor, labels: torch.Tensor,
                       iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images), labels

    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        """``E(x)`` over the whole volume, window by window like training."""
        self.encoder.eval()
        return engine.sliding_window_predict(self.encoder, image, self.patch_size, self.eval_cfg,
                                             self.device, self.amp, softmax=False).clamp(0, 1).cpu()

    def decode(self, server_output: torch.Tensor, key: Key) -> torch.Tensor:
        return server_output

    def white_box(self) -> "EncoderWeights":
        return EncoderWeights(self.encoder, self.patch_size, self.eval_cfg, self.device, self.amp)


class EncoderWeights(WhiteBox):
    """A copy of Privacy-Net's trained encoder, applied window by window like the client does."""

    deterministic = True

    def __init__(self, encoder: torch.nn.Module, patch_size: int, eval_cfg: EvalConfig,
                 device: torch.device, amp: bool):
        self.encoder = copy.deepcopy(encoder).eval()
        self.patch_size, self.eval_cfg, self.device, self.amp = patch_size, eval_cfg, device, amp

    def encode(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return engine.sliding_window_predict(self.encoder, volumes, self.patch_size, self.eval_cfg, self.device,
                                             self.amp, softmax=False).clamp(0, 1).cpu()
