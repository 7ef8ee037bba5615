"""``mni-tissue``: a synthetic longitudinal T1 cohort built offline from the MNI152 template.

The anatomy is the ICBM 2009c nonlinear symmetric template (T1, GM and WM probability maps)
that nilearn ships in its package data. Classes: background, CSF, GM, WM. The template has no
CSF map, so **CSF is derived**: every voxel inside the template's brain mask (T1 > 0) holds
probability ``csf = max(0, 1 - gm - wm)``; this is the ventricles plus the sulcal and cisternal
CSF the skull-stripped mask keeps. Outside the mask is background.

Each subject gets its own anatomy, so that subjects differ the way real ones do:

- head size (isotropic scale ±8%, with ±3% per axis);
- atrophy: wider sulci (tissue partial volumes thresholded upward, freeing CSF) and larger
  ventricles (a smooth radial expansion around the ventricles' centre);
- cortical thickness: the GM/WM boundary moved in or out by a smooth field;
- local deformations of several millimetres (smooth random displacement fields at two scales);
- a faint subject-specific tissue texture (smooth ±4% modulation of GM and WM intensity).

Each subject has 2-4 scans (PPMI-like: half baseline, half a 12-month follow-up with a little
more ventricular expansion). Scans of one subject differ by intensity scaling, tissue contrast,
a smooth bias field, Gaussian noise and a small rigid jitter (±2 degrees, ±1.5 mm); each
scan's label is its own warped anatomy, so image and label stay aligned.

Volumes are cropped to the brain's box and padded to 144x192x160 at 1 mm (the paper's PPMI
size); 2 mm (72x96x80) and 4 mm (36x48x40) variants are made by block-averaging the template
before the anatomy is generated. Everything is deterministic from ``cohort_seed`` and cached as
uncompressed NIfTI (memory-mappable) under ``$PRIVBENCH_CACHE`` or ``~/.cache/privbench``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from privbench.config import RunConfig, TaskConfig
from privbench.errors import PrivbenchError
from privbench.registry import register_task
from privbench.tasks.base import Scan, Task, split_scans, split_subjects
from privbench.tasks.cache import (CACHE_FORMAT, atomic_folder, cache_root, file_records, first_damaged,
                                   remove_stale_temporaries)

GENERATOR_VERSION = 1  # bump when the generated volumes change
FULL_SHAPE = (144, 192, 160)  # at 1 mm, like the paper's PPMI volumes
CLASS_NAMES = ("background", "CSF", "GM", "WM")


@dataclass(frozen=True)
class Template:
    """Template maps at one spacing, each ``[D,H,W]``; ``resid`` is the T1 detail not explained
    by the tissue mixture (deep grey nuclei, vessels ...), carried along with the anatomy."""

    brain: torch.Tensor
    gm: torch.Tensor
    wm: torch.Tensor
    resid: torch.Tensor
    means: tuple[float, float, float]  # template T1 intensity of pure CSF, GM, WM
    ventricle_centre: tuple[float, float, float]  # voxel coordinates
    affine: np.ndarray
    spacing: float


def template_path(kind: str) -> Path:
    """Path of nilearn's packaged MNI152 2009 map ``kind`` in {"t1", "gm", "wm"}."""
    import nilearn.datasets  # only for its package data folder

    folder = Path(nilearn.datasets.__file__).parent / "data"
    return folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"


@functools.lru_cache(maxsize=3)
def load_template(spacing: float) -> Template:
    """The template cropped to the brain's box, padded to 144x192x160 mm and block-averaged."""
    images = {k: nib.load(str(template_path(k))) for k in ("t1", "gm", "wm")}
    t1, gm, wm = (np.asarray(images[k].dataobj, dtype=np.float32) / 255.0 for k in ("t1", "gm", "wm"))
    brain = (t1 > 0).astype(np.float32)
    lo = np.argwhere(brain).min(0)
    hi = np.argwhere(brain).max(0) + 1
    start = (lo + hi) // 2 - np.array(FULL_SHAPE) // 2  # centre the brain box in the full shape
    maps = [_crop_or_pad(a, start, FULL_SHAPE) for a in (brain, gm, wm, t1)]
    brain, gm, wm, t1 = (_block_mean(torch.from_numpy(a), int(spacing)) for a in maps)
    gm, wm = gm * brain.gt(0), wm * brain.gt(0)
    csf = (brain - gm - wm).clamp(min=0)
    inside = brain > 0.5
    design = torch.stack([csf[inside], gm[inside], wm[inside]], 1).double()
    means = torch.linalg.lstsq(design, t1[inside].double()[:, None]).solution.flatten()
    resid = (t1 - (means[0] * csf + means[1] * gm + means[2] * wm).float()) * brain
    # the ventricles: CSF far (> 20 mm) from the brain's outer surface
    depth = ndimage.distance_transform_edt(brain.numpy() > 0.5) * spacing
    deep_csf = (csf.numpy() > 0.5) & (depth > 20)
    centre = tuple(float(c) for c in np.argwhere(deep_csf).mean(0))
    affine = images["t1"].affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start + (spacing - 1) / 2
    affine[:3, :3] *= spacing
    return Template(brain, gm, wm, resid, tuple(float(m) for m in means), centre, affine, spacing)


def _crop_or_pad(a: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=a.dtype)
    src = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, shape, a.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out[dst] = a[src]
    return out


def _block_mean(a: torch.Tensor, factor: int) -> torch.Tensor:
    return F.avg_pool3d(a[None, None], factor)[0, 0] if factor > 1 else a


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: float,
                  control_mm: float, channels: int = 1) -> torch.Tensor:
    """``[channels, *shape]`` smooth random field: unit normals on a ``control_mm`` grid,
    trilinearly interpolated, rescaled to unit standard deviation."""
    coarse = [max(2, int(round(n * spacing / control_mm)) + 1) for n in shape]
    values = torch.from_numpy(rng.standard_normal((1, channels, *coarse)).astype(np.float32))
    field = F.interpolate(values, size=shape, mode="trilinear", align_corners=True)[0]
    return field / field.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)


@dataclass
class Subject:
    """One synthetic subject: tissue maps in template space, and how they are warped."""

    maps: torch.Tensor  # [5, D,H,W]: gm, wm, csf, brain, resid, after atrophy and thickness
    displacement: torch.Tensor  # [3, D,H,W] local displacement in voxels
    scale: torch.Tensor  # [3] head size factor per axis
    atrophy: float  # ventricular expansion strength at baseline
    texture: torch.Tensor  # [2, D,H,W] GM and WM intensity modulation


def make_subject(template: Template, rng: np.random.Generator) -> Subject:
    """Draw one subject's anatomy (see the module docstring)."""
    t, shape, mm = template, tuple(template.brain.shape), template.spacing
    atrophy = float(rng.uniform(0, 1))
    # wider sulci: tissue partial volumes thresholded upward, by a smoothly varying amount
    tau = (0.25 * atrophy + 0.08 * _smooth_noise(rng, shape, mm, 40)[0]).clamp(0, 0.6)
    tissue = t.gm + t.wm
    tissue_new = ((tissue - tau) / (1 - tau)).clamp(0, 1)
    # cortical thickness: the WM share of tissue pushed in or out, smoothly in space
    beta = float(rng.uniform(-1.0, 1.0)) + 0.6 * _smooth_noise(rng, shape, mm, 30)[0]
    share = (t.wm / tissue.clamp(min=1e-4)).clamp(1e-4, 1 - 1e-4)
    share = torch.sigmoid(torch.logit(share) + beta)
    wm, gm = tissue_new * share, tissue_new * (1 - share)
    csf = (t.brain - wm - gm).clamp(min=0)
    maps = torch.stack([gm, wm, csf, t.brain, t.resid])
    # local deformations of several mm, at two scales, in voxels
    displacement = (3.0 * _smooth_noise(rng, shape, mm, 48, 3) + 1.5 * _smooth_noise(rng, shape, mm, 20, 3)) / mm
    size = float(rng.uniform(0.92, 1.08))
    scale = torch.from_numpy(size * rng.uniform(0.97, 1.03, 3)).float()
    texture = 0.04 * _smooth_noise(rng, shape, mm, 16, 2)
    return Subject(maps, displacement, scale, atrophy, texture)


def make_scan(template: Template, subject: Subject, rng: np.random.Generator,
              follow_up: bool) -> tuple[np.ndarray, np.ndarray]:
    """One scan of ``subject``: image float32 in [0, 1] and label uint8 (0 bg, 1 CSF, 2 GM, 3 WM)."""
    warped = warp_maps(template, subject, rng, follow_up)
    gm, wm, csf, brain = warped[:4]
    label = torch.stack([1 - brain, csf, gm, wm]).argmax(0).to(torch.uint8)
    image = finish_image(template, tissue_image(template, subject, warped, rng), rng)
    return image.numpy(), label.numpy()


def warp_maps(template: Template, subject: Subject, rng: np.random.Generator, follow_up: bool) -> torch.Tensor:
    """``subject.maps`` as seen in one scan (rigid jitter, subject warp, ventricles), ``[C,D,H,W]``."""
    grid = _sampling_grid(template, subject, rng, follow_up)
    return F.grid_sample(subject.maps[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0]


def tissue_image(template: Template, subject: Subject, warped: torch.Tensor,
                 rng: np.random.Generator) -> torch.Tensor:
    """The healthy T1 intensities of warped maps, with this scan's tissue contrast."""
    gm, wm, csf, _, resid = warped[:5]
    m_csf, m_gm, m_wm = (m * rng.uniform(0.92, 1.08) for m in template.means)  # contrast
    return (m_csf * csf + m_gm * gm * (1 + subject.texture[0]) + m_wm * wm * (1 + subject.texture[1])
            + resid)


def finish_image(template: Template, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """This scan's smooth bias field, global intensity scale and Gaussian noise, clipped to [0, 1]."""
    shape, mm = tuple(template.brain.shape), template.spacing
    bias = torch.exp(0.08 * _smooth_noise(rng, shape, mm, 80)[0])
    image = image * bias * rng.uniform(0.9, 1.1)
    image = image + float(rng.uniform(0.01, 0.03)) * torch.from_numpy(
        rng.standard_normal(shape).astype(np.float32))
    return image.clamp(0, 1)


def _sampling_grid(template: Template, subject: Subject, rng: np.random.Generator,
                   follow_up: bool) -> torch.Tensor:
    """Where each output voxel samples the template: rigid jitter, then the subject's warp."""
    shape, mm = torch.tensor(template.brain.shape, dtype=torch.float32), template.spacing
    axes = [torch.arange(int(n), dtype=torch.float32) for n in shape]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # [D,H,W,3] voxels
    centre = (shape - 1) / 2
    angles = np.deg2rad(rng.uniform(-2, 2, 3))
    rotation = torch.from_numpy(_rotation(*angles)).float()
    shift = torch.from_numpy(rng.uniform(-1.5, 1.5, 3)).float() / mm
    y = (x - centre) @ rotation.T + centre + shift  # rigid jitter of this scan
    local = F.grid_sample(subject.displacement[None], _normalise(y, shape)[None], mode="bilinear",
                          padding_mode="border", align_corners=True)[0].permute(1, 2, 3, 0)
    # ventricles: radial expansion around their centre (more at follow-up)
    strength = 0.35 * subject.atrophy + (0.05 if follow_up else 0.0)
    vc = torch.tensor(template.ventricle_centre)
    radius = torch.tensor([14.0, 28.0, 14.0]) / mm  # voxels; lateral ventricles are long in y
    offset = y - vc
    weight = torch.exp(-0.5 * ((offset / radius) ** 2).sum(-1, keepdim=True))
    z = centre + (y - centre) / subject.scale + local - strength * weight * offset
    return _normalise(z, shape)[None]


def _normalise(points: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Voxel coordinates (i, j, k) -> grid_sample's [-1, 1] coordinates, ordered (k, j, i)."""
    return (2 * points / (shape - 1) - 1).flip(-1)


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ---------------------------------------------------------------- cohort on disk

@dataclass(frozen=True)
class Cohort:
    """A kind of synthetic cohort: how its subjects and scans are drawn from the template."""

    name: str
    version: int  # bump when the generated volumes change
    class_names: tuple[str, ...]
    make_subject: Callable[[Template, np.random.Generator], Subject]
    make_scan: Callable[[Template, Subject, np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]


TISSUE = Cohort("mni-tissue", GENERATOR_VERSION, CLASS_NAMES, make_subject, make_scan)


def cohort_dir(cfg: TaskConfig, cohort: Cohort = TISSUE) -> Path:
    """The cache folder of the cohort ``cfg`` describes (keyed by every generation setting)."""
    key = {"version": cohort.version, "format": CACHE_FORMAT, "spacing": cfg.spacing,
           "n_subjects": cfg.n_subjects, "min_scans": cfg.min_scans, "max_scans": cfg.max_scans,
           "seed": cfg.cohort_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg) / cohort.name / f"{cfg.spacing:g}mm-{digest}"


def build_cohort(cfg: TaskConfig, cohort: Cohort = TISSUE) -> Path:
    """Generate the cohort into its cache folder unless it is there already; return the folder.

    Generation writes into a temporary sibling folder renamed into place at the end, so an
    interrupted generation never leaves a half-written cohort behind.
    """
    final = cohort_dir(cfg, cohort)
    if final.exists():
        remove_stale_temporaries(final.parent)  # a miss removes them as it writes (atomic_folder)
        return final
    template = load_template(cfg.spacing)
    with atomic_folder(final, "cohort cache", complete=_readable) as tmp:
        root = np.random.SeedSequence(cfg.cohort_seed)
        files = []
        for index, seq in enumerate(root.spawn(cfg.n_subjects)):
            subject_seq, count_seq, *scan_seqs = seq.spawn(2 + cfg.max_scans)
            subject = cohort.make_subject(template, np.random.default_rng(subject_seq))
            n_scans = int(np.random.default_rng(count_seq).integers(cfg.min_scans, cfg.max_scans + 1))
            for s in range(n_scans):
                follow_up = n_scans > 1 and s >= n_scans // 2
                image, label = cohort.make_scan(template, subject, np.random.default_rng(scan_seqs[s]), follow_up)
                stem = f"sub-{index:03d}_ses-{s + 1:02d}"
                for suffix, data in (("T1w", image), ("dseg", label)):
                    nib.save(nib.Nifti1Image(data, template.affine), tmp / f"{stem}_{suffix}.nii")
                files.append({"subject": f"sub-{index:03d}", "session": f"ses-{s + 1:02d}",
                              "follow_up": follow_up, "image": f"{stem}_T1w.nii",
                              "label": f"{stem}_dseg.nii"})
        manifest = {"cohort": cohort.name, "generator_version": cohort.version, "spacing": cfg.spacing,
                    "shape": list(template.brain.shape), "classes": list(cohort.class_names),
                    "scans": files, "files": file_records(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return final


def _readable(folder: Path) -> bool:
    """Whether ``folder`` is a complete, undamaged cohort (as :func:`read_manifest` checks)."""
    try:
        read_manifest(folder)
    except PrivbenchError:
        return False
    return True


def read_manifest(folder: Path) -> dict:
    """The cohort's manifest, after checking every file it lists is there and complete."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        scans, records = manifest["scans"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrivbenchError(f"corrupt cohort cache {folder} (bad manifest: {exc}); "
                             f"delete the folder to regenerate it") from exc
    damaged = first_damaged(folder, records)
    if damaged:
        raise PrivbenchError(f"corrupt cohort cache: {damaged} is missing, truncated or changed; "
                             f"delete {folder} to regenerate it")
    return {"scans": scans, **{k: v for k, v in manifest.items() if k != "scans"}}


class MniTissueTask(Task):
    """Brain tissue segmentation (CSF, GM, WM) on the embedded MNI152-derived cohort."""

    name = "mni-tissue"
    class_names = CLASS_NAMES
    cohort = TISSUE

    def __init__(self, cfg: TaskConfig, patch_size: int):
        self.folder = build_cohort(cfg, self.cohort)
        manifest = read_manifest(self.folder)
        scans = [Scan(item["subject"], item["session"], self.folder / item["image"], self.folder / item["label"])
                 for item in manifest["scans"]]
        roles = split_subjects(sorted({scan.subject for scan in scans}), cfg)
        super().__init__(split_scans(scans, roles, cfg.max_test_scans), cfg.spacing, patch_size)


@register_task("mni-tissue", description="Embedded MNI152-derived longitudinal T1 cohort: CSF/GM/WM "
               "(144x192x160 at 1 mm, or 2/4 mm)",
               paper="Fonov et al., NeuroImage 2011 (MNI152 2009); PPMI-like protocol of Kim et al., "
               "IPMI 2023", requires=())
def mni_tissue(cfg: RunConfig) -> MniTissueTask:
    """The ``mni-tissue`` task for a run configuration (generates or reuses the cached cohort)."""
    return MniTissueTask(cfg.task, cfg.train.patch_size)
