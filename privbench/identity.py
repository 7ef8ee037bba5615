"""Pairs of scans for the Siamese identity discriminator (Privacy-Net, Deformation-Proxy).

:class:`PairSampler` draws balanced batches of co-located patch pairs: positives are two
sessions of one subject, negatives two subjects. :func:`pair_loss` and :func:`pair_accuracy`
train and score a :class:`~privbench.nets.SiameseDiscriminator` on them (the adversarial
defenses train it on encoded pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privbench.engine import ForegroundPicker, crop_patch, pinned
from privbench.errors import PrivbenchError
from privbench.tasks.base import Task


@dataclass
class PairBatch:
    """Patches ``[B,1,P,P,P]`` of both sides of B pairs, their labels ``[B,P,P,P]``, and whether
    each pair is one subject."""

    first: torch.Tensor
    second: torch.Tensor
    same: torch.Tensor  # [B] float, 1 for a positive pair
    first_label: torch.Tensor
    second_label: torch.Tensor

    def to(self, device: torch.device) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.first, self.second, self.same,
                                                   self.first_label, self.second_label)))

    def pin_memory(self) -> "PairBatch":
        """The batch in page-locked memory (the DataLoader calls it with ``pin_memory=True``)."""
        return pinned(self)


class PairSampler:
    """Balanced same-/different-subject pairs of co-located patches from one role of a task;
    batch ``i`` depends only on the seed and ``i``.

    The ``patch_size``-cube lies inside the volumes; ``margin`` widens every patch by that many
    voxels on each side (P = patch_size + 2*margin, zero outside the volume), for defenses that
    warp a patch and need what the warp pulls in from around it. A ``foreground`` share of the
    pairs is placed around a foreground voxel of the first scan (see :class:`PatchSampler`).
    """

    def __init__(self, task: Task, patch_size: int, batch_size: int, seed: int, role: str = "train",
                 margin: int = 0, foreground: float = 0.0):
        scans = task.scans(role)
        by_subject: dict[str, list[int]] = {}
        for index, scan in enumerate(scans):
            by_subject.setdefault(scan.subject, []).append(index)
        self.repeated = [indices for indices in by_subject.values() if len(indices) >= 2]
        if not self.repeated or len(by_subject) < 2:
            raise PrivbenchError(f"task {task.name!r} needs two or more subjects with at least two {role} "
                                 "scans each for the Siamese identity discriminator (privacy-net, deformation)")
        self.groups = list(by_subject.values())
        self.volumes = [task.arrays(scan) for scan in scans]  # memory-mapped images and labels
        self.patch_size, self.batch_size, self.seed, self.margin = patch_size, batch_size, seed, margin
        self.picker = ForegroundPicker([label for _, label in self.volumes], patch_size, foreground)

    def batch(self, iteration: int) -> PairBatch:
        rng = np.random.default_rng([self.seed, iteration])
        sides: tuple[list[torch.Tensor], ...] = ([], [], [], [])  # first, second, their labels
        same = []
        for k in range(self.batch_size):
            positive = k % 2 == 0
            if positive:
                group = self.repeated[rng.integers(len(self.repeated))]
                i, j = rng.choice(group, size=2, replace=False)
            else:
                g1, g2 = rng.choice(len(self.groups), size=2, replace=False)
                i, j = rng.choice(self.groups[g1]), rng.choice(self.groups[g2])
            start = self.picker.corner(int(i), rng)
            start, size = [s - self.margin for s in start], self.patch_size + 2 * self.margin
            for side, index in enumerate((i, j)):
                image, label = self.volumes[index]
                sides[side].append(crop_patch(image, start, size)[None])
                sides[side + 2].append(crop_patch(label, start, size, torch.int64))
            same.append(float(positive))
        first, second, first_label, second_label = map(torch.stack, sides)
        return PairBatch(first, second, torch.tensor(same), first_label, second_label)


def pair_loss(discriminator: torch.nn.Module, first: torch.Tensor, second: torch.Tensor,
              same: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of the discriminator's same-subject logits for the pairs
    ``(first[i], second[i])`` (raw or encoded patches); ``reduction="none"`` gives one per pair."""
    logits = discriminator(first, second)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), same, reduction=reduction)


def adversarial_pairs(scans: torch.Tensor, proxies: torch.Tensor, same: torch.Tensor,
                      cross: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs an adversarial encoder is trained to make unrecognisable, from the scans
    ``[2B,1,p,p,p]`` of B pairs ``(x, x_ref)`` (first sides, then second sides), their proxies
    (``E(x)``, ``E(x_ref)``, likewise) and whether each pair is one subject: the encoded pairs
    ``(E(x), E(x_ref))``, and with ``cross`` the 2019 Privacy-Net code's four more,
    ``(x, E(x))`` and ``(x_ref, E(x_ref))`` (one subject) and ``(x, E(x_ref))``, ``(x_ref, E(x))``
    (the pair's label). Returns both sides and the labels."""
    n = len(same)
    x, x_ref, code, code_ref = scans[:n], scans[n:], proxies[:n], proxies[n:]
    if not cross:
        return code, code_ref, same
    one = torch.ones_like(same)
    return (torch.cat([code, x, x_ref, x, x_ref]), torch.cat([code_ref, code, code_ref, code_ref, code]),
            torch.cat([same, one, one, same, same]))


@torch.no_grad()
def pair_accuracy(discriminator: torch.nn.Module, sampler: PairSampler, batches: int = 4) -> float:
    """Share of pairs the discriminator labels correctly (logit > 0 means same subject)."""
    discriminator.eval()
    correct = total = 0
    for i in range(batches):
        batch = sampler.batch(i)
        guess = discriminator(batch.first, batch.second) > 0
        correct += int((guess == batch.same.bool()).sum())
        total += len(batch.same)
    return correct / total
