"""``linkage``: link each proxy to a gallery of clean scans (an audit beyond the paper).

Threat model: besides the requests it receives, the attacker holds clean scans of many people
(another site's data, a public study the patient was in): here the other sessions of the test
subjects plus every scan of the public pool (distractors), and the public pool's mean image.
For each proxy it ranks the gallery's identities by the correlation of the two after removing
the population mean (the part of a mixture that comes from the target keeps its identity), and,
as a second score, by 3D MS-SSIM. Reported: top-1 and top-5 linkage and mAP
(:func:`privbench.metrics.linkage`) and the ROC over every (request, identity) score
(:mod:`privbench.roc`), against chance and against the same attack on the unprotected scans. The harness never counts a probe's match with the very scan it was made from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from privbench import roc
from privbench.attacks.base import Attack, AttackResult, Gallery, Observation, Truth
from privbench.metrics import linkage, ms_ssim3d, residual_correlation
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS



def similarities(probes: torch.Tensor, gallery: Gallery, msssim: bool = True) -> dict[str, torch.Tensor]:
    """The attacker's scores ``[P,G]`` of probes ``[P,1,D,H,W]`` against the gallery: residual
    correlation after removing the public mean and (optionally) 3D MS-SSIM."""
    scores = {"correlation": residual_correlation(probes, gallery.images, gallery.mean)}
    if msssim:
        scores["msssim"] = torch.stack([ms_ssim3d(p.expand_as(gallery.images).float(), gallery.images.float(),
                                                  data_range=1.0) for p in probes.clamp(0, 1)])
    return scores


def own_scans(subjects: list[str], sessions: list[str], gallery: Gallery) -> torch.Tensor:
    """``[P, G]``: True where a gallery item is the very scan the probe was made from."""
    return torch.tensor([[(s, t) == (gs, gt) for gs, gt in zip(gallery.subjects, gallery.sessions)]
                         for s, t in zip(subjects, sessions)])


def rank(scores: dict[str, torch.Tensor], subjects: list[str], sessions: list[str],
         gallery: Gallery) -> dict[str, dict[str, float]]:
    """Harness: linkage metrics of score matrices for probes made from the scans (``subjects``,
    ``sessions``); a probe's own scan is excluded from the gallery it is ranked against."""
    exclude = own_scans(subjects, sessions, gallery)
    return {name: linkage(s, subjects, gallery.subjects, exclude) for name, s in scores.items()}


def identity_scores(scores: torch.Tensor, subjects: list[str], sessions: list[str],
                    gallery: Gallery) -> roc.IdentityScores:
    """Harness: every probe's score for every gallery identity (its own scan excluded)."""
    return roc.identity_scores(scores.double().numpy(), subjects, gallery.subjects,
                               own_scans(subjects, sessions, gallery).numpy())


def link(probes: torch.Tensor, subjects: list[str], sessions: list[str], gallery: Gallery,
         msssim: bool = True) -> dict[str, dict[str, float]]:
    """Harness shortcut: score probes against the gallery and rank them."""
    return rank(similarities(probes, gallery, msssim), subjects, sessions, gallery)


@register_attack("linkage", description="Link each proxy to a gallery of clean scans by residual "
                 "correlation and MS-SSIM (top-1, top-5, mAP)",
                 paper="privbench audit (beyond Kim et al., IPMI 2023)", requires=(REPEATED_SCANS, PUBLIC_POOL))
class Linkage(Attack):
    """Identify the patient behind each request from a gallery of other clean scans."""

    name = "linkage"
    headline = "top1"
    identifies = "top1"
    grants = ("gallery",)
    observes = ("every test scan's request; a gallery of clean scans (the test subjects' other sessions, "
                "the public pool) and the public mean")

    def reconstruct(self, observation: Observation) -> dict[str, torch.Tensor]:
        """Scores of every request's first image against every gallery scan."""
        probes = torch.cat([request[:1] for request in observation.requests]).float()
        return similarities(probes, observation.gallery)

    def score(self, guesses: dict[str, torch.Tensor], truth: Truth, observation: Observation,
              run_dir: Path) -> AttackResult:
        gallery = observation.gallery
        attacked = rank(guesses, truth.subjects, truth.sessions, gallery)
        clean_scores = similarities(torch.cat(truth.images), gallery, msssim=False)["correlation"]
        raw = rank({"correlation": clean_scores}, truth.subjects, truth.sessions, gallery)["correlation"]
        corr, ssim = attacked["correlation"], attacked["msssim"]
        scored = {"correlation": guesses["correlation"], "msssim": guesses["msssim"], "unprotected": clean_scores}
        low_fpr = roc.report({name: identity_scores(s, truth.subjects, truth.sessions, gallery)
                              for name, s in scored.items()}, run_dir, "linkage",
                             f"linkage on {observation.defense.name}")
        corr, ssim, raw = (r | roc.headline(low_fpr[name]) for r, name in
                           ((corr, "correlation"), (ssim, "msssim"), (raw, "unprotected")))
        headline = ("top1", "top5", "map", "auc", *(f"tpr_at_{name}_fpr" for name in roc.FPRS))
        table = [{"guess": "residual correlation on the requests", **{k: corr[k] for k in headline}},
                 {"guess": "MS-SSIM on the requests", **{k: ssim[k] for k in headline}},
                 {"guess": "residual correlation on the unprotected scans", **{k: raw[k] for k in headline}},
                 {"guess": "chance", "top1": corr["chance_top1"], "top5": corr["chance_top5"], "auc": 0.5}]
        metrics = {**{k: corr[k] for k in (*headline, "chance_top1", "chance_top5")},
                   **{f"msssim_{k}": ssim[k] for k in ("top1", "top5", "map")}}
        settings = {"n_probes": corr["n_probes"], "n_gallery": len(gallery.subjects),
                    "n_identities": corr["n_identities"],
                    "roc_pairs": {k: low_fpr["correlation"][k] for k in ("n_positive", "n_negative")}}
        return AttackResult(metrics, "linkage", table, roc.files("linkage"), settings)
