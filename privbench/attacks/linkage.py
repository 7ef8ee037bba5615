"""``linkage``: link each proxy to a gallery of clean scans (an audit beyond the paper).

Threat model: besides the requests it receives, the attacker holds clean scans of many people
(another site's data, a public study the patient was in): here the other sessions of the test
subjects plus every scan of the public pool (distractors), and the public pool's mean image.
For each proxy it ranks the gallery's identities by the correlation of the two after removing
the population mean (the part of a mixture that comes from the target keeps its identity), and,
as a second score, by 3D MS-SSIM. Reported: top-1 and top-5 linkage and mAP
(:func:`privbench.metrics.linkage`), against chance and against the same attack on the
unprotected scans. A probe is never compared with the very scan it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from privbench.attacks.base import Attack, AttackResult, observe_test_scans, public_statistics
from privbench.config import RunConfig
from privbench.defenses.base import Defense
from privbench.metrics import linkage, ms_ssim3d, residual_correlation
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS, Task

SEED_OFFSET = 15485863  # the attack's keys are drawn apart from the evaluation's and other attacks'


@dataclass
class Gallery:
    """The attacker's clean scans ``[G,1,D,H,W]`` with their identities, and the public pool's
    voxel-wise mean and variance (one volume each)."""

    images: torch.Tensor
    subjects: list[str]
    sessions: list[str]
    mean: torch.Tensor
    variance: torch.Tensor


def build_gallery(task: Task) -> Gallery:
    """Clean scans of the test subjects and of the public pool, and the public pool's statistics."""
    mean, variance = public_statistics(task)
    scans = task.scans("test") + task.scans("public")
    images = torch.stack([task.load(scan)[0] for scan in scans])
    return Gallery(images, [s.subject for s in scans], [s.session for s in scans], mean, variance)


def link(probes: torch.Tensor, subjects: list[str], sessions: list[str], gallery: Gallery,
         msssim: bool = True) -> dict[str, dict[str, float]]:
    """Linkage scores of probes ``[P,1,D,H,W]`` made from the scans (``subjects``, ``sessions``),
    by residual correlation and (optionally) MS-SSIM; the probe's own scan is excluded."""
    exclude = torch.tensor([[(s, t) == (gs, gt) for gs, gt in zip(gallery.subjects, gallery.sessions)]
                            for s, t in zip(subjects, sessions)])
    scores = {"correlation": residual_correlation(probes, gallery.images, gallery.mean)}
    if msssim:
        scores["msssim"] = torch.stack([ms_ssim3d(p.expand_as(gallery.images).float(), gallery.images.float(),
                                                  data_range=1.0) for p in probes.clamp(0, 1)])
    return {name: linkage(s, subjects, gallery.subjects, exclude) for name, s in scores.items()}


@register_attack("linkage", description="Link each proxy to a gallery of clean scans by residual "
                 "correlation and MS-SSIM (top-1, top-5, mAP)",
                 paper="privbench audit (beyond Kim et al., IPMI 2023)", requires=(REPEATED_SCANS, PUBLIC_POOL))
class Linkage(Attack):
    """Identify the patient behind each request from a gallery of other clean scans."""

    name = "linkage"
    headline = "top1"
    observes = ("every test scan's request; a gallery of clean scans (the test subjects' other sessions, "
                "the public pool) and the public mean")

    def run(self, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True) -> AttackResult:
        seen, truth = observe_test_scans(defense, task, seed=cfg.seed + SEED_OFFSET)
        gallery = build_gallery(task)
        probes = torch.cat([proxy[:1] for proxy in seen.proxies]).float()
        attacked = link(probes, truth.subjects, truth.sessions, gallery)
        clean = link(torch.cat(truth.images), truth.subjects, truth.sessions, gallery, msssim=False)
        corr, ssim, raw = attacked["correlation"], attacked["msssim"], clean["correlation"]
        headline = ("top1", "top5", "map")
        table = [{"guess": "residual correlation on the requests", **{k: corr[k] for k in headline}},
                 {"guess": "MS-SSIM on the requests", **{k: ssim[k] for k in headline}},
                 {"guess": "residual correlation on the unprotected scans", **{k: raw[k] for k in headline}},
                 {"guess": "chance", "top1": corr["chance_top1"], "top5": corr["chance_top5"]}]
        metrics = {**{k: corr[k] for k in (*headline, "chance_top1", "chance_top5")},
                   **{f"msssim_{k}": ssim[k] for k in headline}}
        settings = {"n_probes": corr["n_probes"], "n_gallery": len(gallery.subjects),
                    "n_identities": corr["n_identities"]}
        return AttackResult(metrics, "linkage", table, {}, settings)
