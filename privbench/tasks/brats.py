"""``brats2021``: brain-tumor segmentation on a user's local copy of BraTS 2021.

BraTS needs registration with its organisers, so privbench reads the official training layout::

    <task.root>/
      BraTS2021_00000/
        BraTS2021_00000_t1ce.nii.gz     the input (task.modality: t1, t1ce, t2 or flair)
        BraTS2021_00000_seg.nii.gz      labels 0, 1 (NCR), 2 (ED), 4 (ET)
      BraTS2021_00002/
        ...

(``.nii`` files work too.) Labels {0, 1, 2, 4} become classes background, NCR, ED, ET (0-3).
Volumes are 240x240x155 at 1 mm; ``task.spacing`` 2 or 4 resamples them. There is one scan per
subject: defenses and attacks that need two scans of a subject (privacy-net, deformation,
reid) stop with a message saying so.
"""

from __future__ import annotations

from pathlib import Path

from privbench.config import RunConfig, TaskConfig
from privbench.metrics import BRATS_REGIONS
from privbench.registry import register_task
from privbench.tasks.local import LocalTask, Source, dataset_root

CLASS_NAMES = ("background", "NCR", "ED", "ET")
SHAPE_MM = (240, 240, 155)
BRATS_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}
PREFIX = "BraTS2021_"


def _file(folder: Path, kind: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{folder.name}_{kind}{suffix}"
        if path.is_file():
            return path
    return None


def find_scans(root: Path, modality: str) -> list[Source]:
    """Every ``BraTS2021_*`` folder under ``root`` as a :class:`Source`."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)):
        image, label = _file(folder, modality), _file(folder, "seg")
        missing = [f"{folder / folder.name}_{kind}.nii.gz" for kind, path in ((modality, image), ("seg", label))
                   if path is None]
        problem = f"{missing[0]}: file not found" if missing else ""
        out.append(Source(folder.name, "ses-01", image, label, BRATS_LABELS, problem))
    return out


class Brats2021Task(LocalTask):
    """Tumor segmentation (NCR, ED, ET) on a local BraTS 2021 copy."""

    name = "brats2021"
    class_names = CLASS_NAMES
    regions = BRATS_REGIONS

    def __init__(self, cfg: TaskConfig, patch_size: int):
        super().__init__(find_scans(dataset_root(cfg), cfg.modality), SHAPE_MM, cfg, patch_size)


@register_task("brats2021", description="BraTS 2021 from your local copy (--set task.root=...): NCR/ED/ET "
               "on T1ce (or task.modality)", paper="Baid et al., arXiv 2107.02314 (BraTS 2021); "
               "Kim et al., IPMI 2023", requires=("a local BraTS 2021 copy (task.root)",),
               defaults={"*": {"train.foreground_fraction": 0.33, "task.test_fraction": 0.2},
                         "paper": {"train.patch_size": 64}})  # the paper's BraTS patches
def brats2021(cfg: RunConfig) -> Brats2021Task:
    """The ``brats2021`` task read from ``task.root`` (preprocessed once, then cached)."""
    return Brats2021Task(cfg.task, cfg.train.patch_size)
