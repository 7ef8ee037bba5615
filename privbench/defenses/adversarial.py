"""What Privacy-Net and Deformation-Proxy share: a client-side encoder trained against a Siamese
identity discriminator, and a server that segments what the encoder produces.

Each training iteration draws balanced pairs of co-located patches ``(x, x_ref)`` (two sessions
of one subject, or two subjects; :class:`~privbench.identity.PairSampler`), encodes every patch
as the client would (:meth:`AdversarialDefense.encode_patches`), and makes two updates in turn:

1. the encoder and the server's U-Net++ on ``segmentation - lambda * discrimination``: Dice + CE
   of the server's segmentation of the first patch of each pair, minus ``adversary.weight`` times
   the discriminator's binary cross-entropy on the adversarial pairs, so that they learn to
   segment while making the pairs unrecognisable. With ``adversary.cross_pairs`` (the default,
   as in the 2019 Privacy-Net code) these are the five pairs of that code: ``(E(x), E(x_ref))``
   with its true label, ``(x, E(x))`` and ``(x_ref, E(x_ref))`` labelled "same subject", and
   ``(x, E(x_ref))``, ``(x_ref, E(x))`` with the pair's true label; a scan and its own encoding
   must look unrelated, which penalises an encoding that is the identity. Without it, only the
   encoded pair counts (the 2021 code). Each pair's cross-entropy counts up to chance level
   (log 2) only: an encoder rewarded for making the discriminator confidently wrong learns to
   invert it, and an inverted discriminator still tells subjects apart;
2. the discriminator, ``adversary.disc_steps`` times, on the same pairs detached (with cross
   pairs also the raw pair ``(x, x_ref)``, as in the 2019 code), learning to recognise them again.

Both defenses need subjects with two or more scans; a task without them fails before training.
"""

from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss

from privbench import engine
from privbench.config import MAX_WEIGHT, RunConfig, require
from privbench.errors import PrivbenchError
from privbench.defenses.base import TrainedDefense
from privbench.identity import PairBatch, PairSampler, adversarial_pairs, pair_loss
from privbench.nets import SegmentationNet, SiameseDiscriminator
from privbench.tasks.base import Task

@dataclass
class AdversaryConfig:
    """The Siamese identity discriminator that privacy-net and deformation are trained to fool."""

    weight: float = 1.0  # lambda: encoder and segmenter minimise segmentation - lambda * discriminator BCE
    features: tuple[int, ...] = (8, 16, 32, 64)  # widths of its conv blocks (each halves the patch)
    cross_pairs: bool = True  # Privacy-Net 2019's five pairs: a scan and its own encoding too
    disc_steps: int = 1  # discriminator updates per encoder update (both Privacy-Net codes: 1)

    PRESETS = {"test": {"features": (4, 8, 8, 16)}, "paper": {"features": (16, 32, 64, 128)}}

    def validate(self, run: RunConfig) -> None:
        require((0 <= self.weight <= MAX_WEIGHT, f"adversary.weight (lambda) must be in [0, {MAX_WEIGHT:g}]"),
                (len(self.features) >= 1 and min(self.features) >= 1
                 and run.train.patch_size % 2 ** len(self.features) == 0,
                 "adversary.features must be positive ints, one block per halving of train.patch_size"),
                (1 <= self.disc_steps <= 100, "adversary.disc_steps must be in [1, 100]"))


CHANCE = math.log(2)  # cross-entropy of a discriminator that cannot tell
HELD_OUT_BATCHES = 8  # batches of held-out validation pairs the discriminator's accuracy is measured on


class AdversarialDefense(TrainedDefense):
    """An encoder (``self.encoder``) and a server U-Net++ (``self.net``) trained end to end
    against a :class:`~privbench.nets.SiameseDiscriminator` (``self.discriminator``)."""

    def sampler(self, task: Task, cfg: RunConfig) -> PairSampler:
        """Same- and different-subject pairs of co-located patches, widened by the margin."""
        return PairSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed,
                           margin=self.margin(), foreground=cfg.train.foreground_fraction)

    def validator(self, task: Task, cfg: RunConfig) -> engine.Validate | None:
        """The default validation, plus ``val_disc_acc``: the discriminator's accuracy on held-out
        encoded pairs ``(E(x), E(x_ref))`` of the validation subjects (0.5 is chance: the
        defender's own adversary no longer tells them apart), where they have repeated scans."""
        scores = super().validator(task, cfg)
        if scores is None:
            return None
        try:
            held_out = PairSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed, role="validation",
                                   margin=self.margin())
        except PrivbenchError:  # too few repeated validation scans to make pairs
            return scores

        def validate() -> dict[str, float]:
            correct = []
            for i in range(HELD_OUT_BATCHES):
                batch = held_out.batch(i).to(self.device)
                proxies, _ = self.encode_patches(torch.cat([batch.first, batch.second]),
                                                 torch.cat([batch.first_label, batch.second_label]),
                                                 cfg.train.iterations + i)  # noise never drawn in training
                n = len(batch.same)
                with engine.autocast(self.device, self.amp):
                    logits = self.discriminator(proxies[:n], proxies[n:]).float()
                correct.append(((logits > 0).float() == batch.same).float())
            return scores() | {"val_disc_acc": float(torch.cat(correct).mean())}

        return validate

    def identity_embedder(self) -> "DiscriminatorEmbedder":
        return DiscriminatorEmbedder(self.discriminator, self.device)

    @abc.abstractmethod
    def build_encoder(self, cfg: RunConfig, spacing: float) -> torch.nn.Module:
        """The client's trainable encoder."""

    def margin(self) -> int:
        """Voxels the training patches reach beyond the patch on each side (for encoders that
        pull in content from around it)."""
        return 0

    @abc.abstractmethod
    def encode_patches(self, images: torch.Tensor, labels: torch.Tensor,
                       iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time client: proxies ``[N,1,p,p,p]`` of patches ``[N,1,P,P,P]`` (P = p plus
        twice the margin), and the labels ``[N,p,p,p]`` in the proxies' space."""

    def build(self, cfg: RunConfig) -> engine.Step:
        """Create the encoder, server, discriminator and their optimisers; return one training
        step (the benchmarks time it)."""
        device, num_classes = self.device, self.num_classes
        self.encoder = self.build_encoder(cfg, self.spacing).to(device)
        self.net = SegmentationNet(1, num_classes, cfg.train.features).to(device)
        self.discriminator = SiameseDiscriminator(cfg.adversary.features).to(device)
        optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.net.parameters()], lr=cfg.train.lr)
        disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.train.lr)
        self.state = {"encoder": self.encoder, "net": self.net, "discriminator": self.discriminator,
                      "optimizer": optimizer, "disc_optimizer": disc_optimizer}
        seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        weight, settings = cfg.adversary.weight, cfg.adversary

        def step(batch: PairBatch, iteration: int) -> dict[str, float]:
            for module in (self.encoder, self.net, self.discriminator):
                module.train()
            for opt in (optimizer, disc_optimizer):
                engine.set_learning_rate(opt, engine.learning_rate(cfg.train, iteration))
            n = len(batch.same)
            scans = torch.cat([batch.first, batch.second])
            with engine.autocast(device, self.amp):
                proxies, labels = self.encode_patches(scans, torch.cat([batch.first_label, batch.second_label]),
                                                      iteration)
                logits = self.net(proxies[:n])
                m = self.margin()
                raw = scans[(..., *(slice(m, size - m) for size in scans.shape[2:]))]  # as the proxies
                first, second, same = adversarial_pairs(raw, proxies, batch.same, settings.cross_pairs)
                per_pair = pair_loss(self.discriminator, first, second, same, "none")
            seg = seg_loss(logits.float(), labels[:n, None])
            loss = seg - weight * per_pair.clamp(max=CHANCE).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            first, second = first.detach(), second.detach()
            if settings.cross_pairs:  # the 2019 code also shows the discriminator the raw pair
                first, second = torch.cat([first, raw[:n]]), torch.cat([second, raw[n:]])
                same = torch.cat([same, batch.same])
            for _ in range(settings.disc_steps):
                with engine.autocast(device, self.amp):
                    disc_logits = self.discriminator(first, second).float()
                disc = torch.nn.functional.binary_cross_entropy_with_logits(disc_logits, same)
                disc_optimizer.zero_grad(set_to_none=True)
                disc.backward()
                disc_optimizer.step()
            accuracy = ((disc_logits.detach() > 0).float() == same).float().mean()
            return {"loss": loss.item(), "seg": seg.item(), "disc": disc.item(), "disc_acc": accuracy.item()}

        return step


class DiscriminatorEmbedder(torch.nn.Module):
    """A copy of a trained :class:`~privbench.nets.SiameseDiscriminator` that embeds whole volumes:
    each is cropped (centred) to a multiple of the network's pooling, then embedded as in training."""

    def __init__(self, discriminator: SiameseDiscriminator, device: torch.device):
        super().__init__()
        self.net, self.device = copy.deepcopy(discriminator).eval(), device
        self.multiple = 2 ** sum(isinstance(layer, torch.nn.MaxPool3d) for layer in self.net.body)

    @torch.no_grad()
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        crop = tuple(slice((n % self.multiple) // 2, (n % self.multiple) // 2 + n - n % self.multiple)
                     for n in volume.shape[2:])
        return self.net.embed(volume[(..., *crop)].to(self.device)).float().cpu()
