"""``mni-tumor``: a BraTS-like synthetic brain-tumor cohort on the ``mni-tissue`` anatomy.

Each subject is an ``mni-tissue`` subject (head size, atrophy, cortical thickness, local warps,
texture) carrying one tumor, drawn in template space and warped with the anatomy:

- a centre anywhere in brain tissue at least 12 mm deep;
- an enhancing core of radius 8-22 mm, elongated (per-axis factors 0.75-1.3, randomly
  rotated) and irregular (its radius modulated by ±30% smooth noise);
- a necrotic centre in 80% of tumors (inner radius 45-85% of the core's);
- an edema halo 1.6-2.8 times the core's radius plus 6 mm, confined to GM and WM (weighted
  to WM, where edema spreads);
- mass effect: the surrounding anatomy is pushed outward.

Classes follow BraTS with its label 4 renumbered 3: 0 background (healthy brain and outside),
1 NCR (necrotic core), 2 ED (edema), 3 ET (enhancing tumor). The image is T1ce-like: healthy
tissue at 80% of the T1 template's contrast, enhancing rim bright (above WM), necrosis dark
(near CSF), edema 25% darker than the tissue it replaces, each with a little texture. Scans
of one subject repeat the same tumor (2-4 scans, as in ``mni-tissue``; ``task.max_scans=1``
gives BraTS's one scan per subject). Generated deterministically from ``cohort_seed`` and cached
like ``mni-tissue``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from privbench.config import RunConfig
from privbench.metrics import BRATS_REGIONS
from privbench.registry import register_task
from privbench.tasks import mni
from privbench.tasks.mni import Subject, Template

GENERATOR_VERSION = 1  # bump when the generated volumes change
CLASS_NAMES = ("background", "NCR", "ED", "ET")
HEALTHY_CONTRAST = 0.8  # healthy tissue's share of the T1 template intensity (enhancement is brightest)


def make_subject(template: Template, rng: np.random.Generator) -> Subject:
    """An ``mni-tissue`` subject whose maps gain three tumor channels (NCR, ED, ET fractions)."""
    subject = mni.make_subject(template, rng)
    mm, shape = template.spacing, tuple(template.brain.shape)
    gm, wm, _, brain = subject.maps[:4]
    depth = ndimage.distance_transform_edt(brain.numpy() > 0.5) * mm
    candidates = np.argwhere(((gm + wm).numpy() > 0.5) & (depth >= 12))
    centre = torch.from_numpy(candidates[rng.integers(len(candidates))].astype(np.float32))
    core = float(rng.uniform(8, 22))  # mm
    inner = core * float(rng.uniform(0.45, 0.85)) if rng.random() < 0.8 else 0.0
    halo = core * float(rng.uniform(1.6, 2.8)) + 6.0
    axes = torch.from_numpy(mni._rotation(*rng.uniform(0, np.pi, 3)) * rng.uniform(0.75, 1.3, 3)[:, None]).float()
    irregular = 1 + 0.3 * mni._smooth_noise(rng, shape, mm, 12)[0].clamp(-2, 2) / 2
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), -1)
    offset = (grid - centre) * mm  # mm from the centre
    radius = (offset @ torch.linalg.inv(axes).T).norm(dim=-1) / irregular  # irregular ellipsoidal distance
    inside = lambda r: torch.sigmoid((r - radius) / 0.7)  # noqa: E731  soft ball of radius r mm
    ncr = inside(inner) if inner > 0 else torch.zeros(shape)
    et = (inside(core) - ncr).clamp(min=0)
    tissue = ((wm + 0.5 * gm) / brain.clamp(min=1e-3)).clamp(0, 1)
    ed = (inside(halo) - inside(core)).clamp(min=0) * tissue
    tumor = torch.stack([ncr, ed, et]) * brain
    # mass effect: sample nearer the centre, so the anatomy around the tumor moves outward
    push = 0.3 * torch.exp(-0.5 * (offset.norm(dim=-1) / halo) ** 2)
    subject.displacement = subject.displacement - push * (grid - centre).permute(3, 0, 1, 2)
    subject.maps = torch.cat([subject.maps, tumor])
    return subject


def make_scan(template: Template, subject: Subject, rng: np.random.Generator,
              follow_up: bool) -> tuple[np.ndarray, np.ndarray]:
    """One T1ce-like scan: image float32 in [0, 1], label uint8 (0 bg, 1 NCR, 2 ED, 3 ET)."""
    warped = mni.warp_maps(template, subject, rng, follow_up)
    ncr, ed, et = warped[5:8]
    healthy = HEALTHY_CONTRAST * mni.tissue_image(template, subject, warped, rng)
    m_csf, _, m_wm = template.means
    shape, mm = tuple(template.brain.shape), template.spacing
    texture = 1 + 0.08 * mni._smooth_noise(rng, shape, mm, 6)[0]
    image = ((1 - ncr - ed - et) * healthy + ncr * m_csf * 1.2 * texture
             + ed * 0.75 * healthy * texture + et * 1.1 * m_wm * texture)
    label = torch.stack([1 - ncr - ed - et, ncr, ed, et]).argmax(0).to(torch.uint8)
    return mni.finish_image(template, image, rng).numpy(), label.numpy()


TUMOR = mni.Cohort("mni-tumor", GENERATOR_VERSION, CLASS_NAMES, make_subject, make_scan)


class MniTumorTask(mni.MniTissueTask):
    """Brain-tumor segmentation (NCR, ED, ET) on the embedded BraTS-like cohort."""

    name = "mni-tumor"
    class_names = CLASS_NAMES
    regions = BRATS_REGIONS
    cohort = TUMOR


@register_task("mni-tumor", description="Embedded BraTS-like cohort: synthetic tumors (NCR, ED, ET) on the "
               "mni-tissue anatomy, T1ce-like", paper="BraTS 2021 labels (Baid et al., 2021); protocol of "
               "Kim et al., IPMI 2023", requires=(),
               defaults={"*": {"train.foreground_fraction": 0.33}, "paper": {"train.patch_size": 64}})
def mni_tumor(cfg: RunConfig) -> MniTumorTask:
    """The ``mni-tumor`` task for a run configuration (generates or reuses the cached cohort)."""
    return MniTumorTask(cfg.task, cfg.train.patch_size)
