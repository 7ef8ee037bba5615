"""Training batches: random cubic patches of a task's scans.

:class:`PatchSampler`'s batch ``i`` depends only on the seed and ``i``, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from privbench.errors import PrivbenchError
from privbench.tasks.base import Task


@dataclass
class Batch:
    """A training batch: images ``[B,1,p,p,p]``, labels ``[B,p,p,p]`` and their subjects; with
    ``references``, a second scan's patch at the same position (``ref_image``, ``ref_label``)."""

    image: torch.Tensor
    label: torch.Tensor
    subjects: list[str]
    ref_image: torch.Tensor | None = None
    ref_label: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(self.image.to(device), self.label.to(device), self.subjects,
                     move(self.ref_image), move(self.ref_label))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (the DataLoader calls it with ``pin_memory=True``)."""
        return pinned(self)


def pinned(batch: Any) -> Any:
    """A dataclass batch with every tensor field in page-locked memory."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).pin_memory()
                                         for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})


def share(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of a dataclass batch: every tensor or list field cut
    along its first axis into ``world`` equal parts (the batch size divides by ``world``). The
    ranks' shares together are exactly the single-process batch."""
    def part(value: Any) -> Any:
        if isinstance(value, (torch.Tensor, list)) and len(value):
            size = len(value) // world
            return value[rank * size:(rank + 1) * size]
        return value

    return dataclasses.replace(batch, **{f.name: part(getattr(batch, f.name)) for f in dataclasses.fields(batch)})


class _Numbered(torch.utils.data.Dataset):
    """Batches ``start .. stop - 1`` of a sampler, by position (for DataLoader workers)."""

    def __init__(self, sampler: Any, start: int, stop: int):
        self.sampler, self.start, self.stop = sampler, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, position: int) -> Any:
        return self.sampler.batch(self.start + position)


def batches(sampler: Any, start: int, stop: int, workers: int = 0, pin_memory: bool = False) -> Iterator[Any]:
    """Batches ``start .. stop - 1`` of ``sampler``, in order: made on the main thread
    (``workers`` 0), or ahead of the training step by ``workers`` DataLoader processes, two
    batches each, in page-locked memory with ``pin_memory``. Batch ``i`` is ``sampler.batch(i)``
    either way (a function of the seed and ``i``), so the stream and a resumed run stay exact."""
    if workers <= 0:
        return (sampler.batch(i) for i in range(start, stop))
    loader = torch.utils.data.DataLoader(_Numbered(sampler, start, stop), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=pin_memory, prefetch_factor=2)
    return iter(loader)


class PatchSampler:
    """Random scans and patch positions from one role of a task.

    Positions are uniform, except that a ``foreground`` share of the patches (nnU-Net's
    oversampling, for small structures such as tumors) is centred on a voxel of a random
    foreground class present in the scan. With ``references=True`` each patch comes with the
    co-located patch of another scan of the same role (of another subject when there is one):
    the pairs Mixup-Privacy mixes, since the volumes are aligned and the client mixes whole
    volumes.
    """

    def __init__(self, task: Task, patch_size: int, batch_size: int, seed: int, role: str = "train",
                 references: bool = False, foreground: float = 0.0):
        self.scans = task.scans(role)
        if not self.scans:
            raise PrivbenchError(f"task {task.name!r} has no {role} scans")
        self.volumes = [task.arrays(scan) for scan in self.scans]  # memory-mapped, not copied
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed
        self.references = references
        self.picker = ForegroundPicker([label for _, label in self.volumes], patch_size, foreground)

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        partners = np.random.default_rng([self.seed, iteration, 1])  # targets stay the baseline's
        images, labels, subjects, ref_images, ref_labels = [], [], [], [], []
        for index in rng.integers(len(self.volumes), size=self.batch_size):
            image, label = self.volumes[index]
            start = self.picker.corner(int(index), rng)
            images.append(crop_patch(image, start, self.patch_size)[None])
            labels.append(crop_patch(label, start, self.patch_size, torch.int64))
            subjects.append(self.scans[index].subject)
            if self.references:
                ref_image, ref_label = self.volumes[self._partner(int(index), partners)]
                ref_images.append(crop_patch(ref_image, start, self.patch_size)[None])
                ref_labels.append(crop_patch(ref_label, start, self.patch_size, torch.int64))
        if not self.references:
            return Batch(torch.stack(images), torch.stack(labels), subjects)
        return Batch(torch.stack(images), torch.stack(labels), subjects,
                     torch.stack(ref_images), torch.stack(ref_labels))

    def _partner(self, index: int, rng: np.random.Generator) -> int:
        """A random scan of another subject (any other scan if every scan is this subject's)."""
        subject = self.scans[index].subject
        others = [i for i, scan in enumerate(self.scans) if scan.subject != subject]
        others = others or [i for i in range(len(self.scans)) if i != index] or [index]
        return others[int(rng.integers(len(others)))]


class ForegroundPicker:
    """Patch corners in label volumes: uniform, except that a ``share`` of them lies around a
    foreground voxel (a random foreground class present in the volume, a random voxel of it at
    the patch's centre, moved inward where the patch would leave the volume). Each volume's
    voxel lists are found once, on first use; with ``share`` 0 no extra random number is drawn."""

    def __init__(self, labels: list[np.ndarray], patch_size: int, share: float = 0.0):
        self.labels, self.patch_size, self.share = labels, patch_size, share
        self._voxels: dict[int, list[np.ndarray]] = {}

    def corner(self, index: int, rng: np.random.Generator) -> list[int]:
        """A patch corner in volume ``index``: around the foreground with probability ``share``."""
        if self.share and rng.random() < self.share:
            return self.start(index, rng)
        return random_start(rng, self.labels[index].shape, self.patch_size)

    def start(self, index: int, rng: np.random.Generator) -> list[int]:
        """The corner of a patch of volume ``index`` (uniform if it holds only background)."""
        shape, p = self.labels[index].shape, self.patch_size
        if index not in self._voxels:
            label = np.asarray(self.labels[index])
            self._voxels[index] = [np.argwhere(label == c) for c in np.unique(label) if c > 0]
        classes = self._voxels[index]
        if not classes:
            return random_start(rng, shape, p)
        voxels = classes[int(rng.integers(len(classes)))]
        centre = voxels[int(rng.integers(len(voxels)))]
        return [min(max(int(c) - p // 2, 0), max(n - p, 0)) for c, n in zip(centre, shape)]


def random_start(rng: np.random.Generator, shape: tuple[int, ...], p: int) -> list[int]:
    """A uniformly random corner of a ``p``-cube inside ``shape`` (0 where a side is shorter)."""
    return [int(rng.integers(0, max(n - p, 0) + 1)) for n in shape]


def crop_patch(volume: np.ndarray, start: list[int], p: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``p``-cube of ``volume`` from ``start``, as a tensor, zero-padded where it reaches
    outside the volume (a negative ``start``, or a volume smaller than a patch)."""
    inside = [slice(max(s, 0), min(s + p, n)) for s, n in zip(start, volume.shape)]
    t = torch.tensor(volume[tuple(inside)], dtype=dtype)
    pad = [x for s, cut in zip(reversed(start), reversed(inside)) for x in (cut.start - s, s + p - cut.stop)]
    return torch.nn.functional.pad(t, pad) if any(pad) else t
