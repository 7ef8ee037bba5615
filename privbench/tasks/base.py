"""What every task provides: labelled scans with subject identities, split by role.

A task is a list of :class:`Scan` records (subject, session, image file, label file) split
into four roles, always disjoint by subject where it matters for privacy:

- ``train``: the client's labelled training scans;
- ``test``: the victims; never used for training, references or the attacker's data;
- ``reference``: the client's private reference pool (labelled), a subset of ``train``;
- ``public``: the attacker's public pool, sharing no subject with train, test or reference;
- ``validation``: the first ``task.validation_subjects`` public subjects, whose scans score
  training progress (public data anyone may use: carving them changes no training set, and
  they share no subject with the victims).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from privbench.config import TaskConfig
from privbench.errors import PrivbenchError

ROLES = ("train", "test", "reference", "public")
REPEATED_SCANS = "two or more scans per subject"  # what defenses and attacks that compare sessions require
PUBLIC_POOL = "a public pool of two or more scans"  # what attacks that learn from public scans require


@dataclass(frozen=True)
class Scan:
    """One scan of one subject, stored as a NIfTI image and a NIfTI label map."""

    subject: str
    session: str
    image: Path
    label: Path


class Task:
    """A segmentation dataset: class names, voxel spacing and scans by role."""

    name: str = ""
    class_names: tuple[str, ...] = ()  # including "background" at index 0
    regions: tuple[tuple[str, tuple[str, ...]], ...] = ()  # scored label unions, e.g. BraTS's WT, TC, ET

    def __init__(self, splits: dict[str, list[Scan]], spacing: float, patch_size: int):
        missing = [role for role in ROLES if role not in splits]
        if missing:
            raise ValueError(f"task splits lack roles {missing}")
        self.splits = {"validation": [], **splits}
        self.spacing = spacing
        self.patch_size = patch_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scans(self, role: str) -> list[Scan]:
        return self.splits[role]

    def subjects(self, role: str) -> list[str]:
        return sorted({scan.subject for scan in self.splits[role]})

    def repeated_subjects(self, role: str) -> list[str]:
        """Subjects with two or more scans in ``role``."""
        sessions = [scan.subject for scan in self.splits[role]]
        return sorted({s for s in sessions if sessions.count(s) > 1})

    def arrays(self, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
        """Image and label voxels ``[D,H,W]`` as stored (memory-mapped where the file allows)."""
        return read_volume(scan.image), read_volume(scan.label)

    def check_finite(self) -> None:
        """Every scan's image holds finite voxels only, whatever a cache's digests say (a file
        rewritten with NaN and its digest updated passes them); :class:`PrivbenchError` names
        the first that does not, before a run trains on it."""
        for scans in self.splits.values():
            for scan in scans:
                image = self.arrays(scan)[0]
                if not all(np.isfinite(plane).all() for plane in image):  # a slice at a time: memory-mapped
                    raise PrivbenchError(f"{scan.image} holds NaN or infinite voxels (a damaged file or cache "
                                         "entry): replace the file, or delete the cache folder to regenerate it")

    def load(self, scan: Scan) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[1,D,H,W]`` float32 in [0, 1] and label ``[D,H,W]`` int64 of one scan."""
        image, label = self.arrays(scan)
        return torch.from_numpy(np.array(image, dtype=np.float32))[None], torch.from_numpy(
            np.array(label, dtype=np.int64))

    def summary(self) -> dict[str, object]:
        """Counts and settings for the result card."""
        return {
            "task": self.name,
            "classes": list(self.class_names),
            "spacing_mm": self.spacing,
            "patch_size": self.patch_size,
            **{f"{role}_scans": len(scans) for role, scans in self.splits.items()},
            **{f"{role}_subjects": len(self.subjects(role)) for role in self.splits},
        }


def split_subjects(subjects: list[str], cfg: TaskConfig) -> dict[str, list[str]]:
    """Subject-disjoint roles from a seeded shuffle: test, public, train (reference ⊂ train)."""
    order = list(np.random.default_rng(cfg.cohort_seed + 1).permutation(sorted(subjects)))
    n_test = max(1, round(cfg.test_fraction * len(order)))
    n_public = round(cfg.public_fraction * len(order))
    test, public, train = order[:n_test], order[n_test:n_test + n_public], order[n_test + n_public:]
    if len(train) < 1:
        raise PrivbenchError("too few subjects: none left for training; raise task.n_subjects")
    reference = train[: min(cfg.reference_subjects, len(train))]
    return with_validation({"train": sorted(train), "test": sorted(test), "reference": sorted(reference),
                            "public": sorted(public)}, cfg)


def with_validation(roles: dict[str, list[str]], cfg: TaskConfig) -> dict[str, list[str]]:
    """``roles`` plus ``validation``: the first ``cfg.validation_subjects`` public subjects."""
    return {**roles, "validation": sorted(roles["public"])[: cfg.validation_subjects]}


def split_scans(scans: list[Scan], roles: dict[str, list[str]], max_test_scans: int = 0) -> dict[str, list[Scan]]:
    """Each role's scans, from each role's subjects (``max_test_scans`` > 0 caps the test role)."""
    by_subject: dict[str, list[Scan]] = {}
    for scan in scans:
        by_subject.setdefault(scan.subject, []).append(scan)
    splits = {role: [s for subj in subjects for s in by_subject[subj]] for role, subjects in roles.items()}
    if max_test_scans:
        splits["test"] = splits["test"][:max_test_scans]
    return splits


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume's voxels (memory-mapped when uncompressed); unreadable files raise clearly."""
    try:
        return np.asanyarray(nib.load(str(path), mmap=True).dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise PrivbenchError(f"cannot read {path}: {exc}") from exc
