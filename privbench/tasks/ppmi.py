"""``ppmi``: brain tissue (CSF, GM, WM) on a user's local copy of PPMI T1 scans.

PPMI needs a data-use agreement, so privbench reads a folder the user prepared::

    <task.root>/
      <subject>/                 one folder per subject (its name is the subject's id)
        <session>/               one folder per scan session (e.g. BL, V04)
          *T1w.nii.gz            the T1 image (also *T1w.nii, *T1w.mgz or T1.mgz)
          *dseg.nii.gz           tissue labels 0 background, 1 CSF, 2 GM, 3 WM (also .nii, .mgz)
          or *aseg.mgz           a FreeSurfer aseg (also *aseg.nii.gz, *aseg.nii), mapped by ASEG_TISSUE

Exactly one image and one label file per session. Scans are reoriented to RAS, resampled to
``task.spacing`` mm where needed, cropped or padded to 144x192x160 mm (the paper's size) and
scaled to [0, 1] (:mod:`privbench.tasks.preprocess`). Sessions of one subject are that subject's
repeated scans, which re-identification and the Siamese discriminator use.
"""

from __future__ import annotations

from pathlib import Path

from privbench.config import RunConfig, TaskConfig
from privbench.registry import register_task
from privbench.tasks.local import LocalTask, Source, dataset_root

CLASS_NAMES = ("background", "CSF", "GM", "WM")
SHAPE_MM = (144, 192, 160)
IMAGE_SUFFIXES = ("T1w.nii.gz", "T1w.nii", "T1w.mgz", "T1.mgz")
DSEG_SUFFIXES = ("dseg.nii.gz", "dseg.nii", "dseg.mgz")
ASEG_SUFFIXES = ("aseg.nii.gz", "aseg.nii", "aseg.mgz")
DSEG_TISSUE = {0: 0, 1: 1, 2: 2, 3: 3}
_CSF = (4, 5, 14, 15, 24, 30, 31, 43, 44, 62, 63, 72)  # ventricles, CSF, vessels, choroid plexus
_GM = (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58, 80, 81, 82)  # cortex, deep grey nuclei
_WM = (2, 7, 16, 28, 41, 46, 60, 77, 78, 79, 85, 251, 252, 253, 254, 255)  # white matter, brain stem, ventral DC, CC
ASEG_TISSUE = {0: 0, **{v: 1 for v in _CSF}, **{v: 2 for v in _GM}, **{v: 3 for v in _WM}}
"""FreeSurfer aseg label -> tissue class (FreeSurferColorLUT numbers). CSF: lateral, inferior
lateral, 3rd, 4th and 5th ventricles, CSF, vessels, choroid plexus. GM: cerebral and cerebellar
cortex, thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, non-WM
hypointensities. WM: cerebral and cerebellar white matter, brain stem, ventral DC, WM
hypointensities, optic chiasm, corpus callosum. Any other value is an error."""


def _matching(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes))


def find_scans(root: Path) -> list[Source]:
    """Every session folder under ``root`` as a :class:`Source` (dseg or aseg label table)."""
    out = []
    for subject in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for session in sorted(p for p in subject.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images, dsegs, asegs = (_matching(session, s) for s in (IMAGE_SUFFIXES, DSEG_SUFFIXES, ASEG_SUFFIXES))
            problem = ""
            if len(images) != 1:
                problem = (f"{session}: {'no' if not images else 'more than one'} T1 image "
                           f"(expected one of *{', *'.join(IMAGE_SUFFIXES)})")
            elif len(dsegs) + len(asegs) != 1:
                problem = (f"{session}: {'no' if not dsegs + asegs else 'more than one'} label file "
                           f"(expected one *dseg or *aseg file, .nii.gz, .nii or .mgz)")
            image = images[0] if len(images) == 1 else None
            label = (dsegs + asegs)[0] if len(dsegs) + len(asegs) == 1 else None
            table = ASEG_TISSUE if label in asegs else DSEG_TISSUE
            out.append(Source(subject.name, session.name, image, label, table, problem))
    return out


class PpmiTask(LocalTask):
    """Brain tissue segmentation (CSF, GM, WM) on a local PPMI copy."""

    name = "ppmi"
    class_names = CLASS_NAMES

    def __init__(self, cfg: TaskConfig, patch_size: int):
        super().__init__(find_scans(dataset_root(cfg)), SHAPE_MM, cfg, patch_size)


@register_task("ppmi", description="PPMI T1 from your local copy (--set task.root=...): CSF/GM/WM from "
               "tissue maps or FreeSurfer aseg", paper="Parkinson's Progression Markers Initiative; "
               "Kim et al., IPMI 2023", requires=("a local PPMI copy (task.root)",))
def ppmi(cfg: RunConfig) -> PpmiTask:
    """The ``ppmi`` task read from ``task.root`` (preprocessed once, then cached)."""
    return PpmiTask(cfg.task, cfg.train.patch_size)
