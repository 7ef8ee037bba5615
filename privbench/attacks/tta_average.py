"""``tta-average``: recover the target from the K mixtures of one reference-TTA request.

With reference TTA (the paper's Eq. 5-6) one request carries K mixtures of one target with one
weight, ``m_k = a*x + (1-a)*r_k``. The attacker, who holds the public pool's voxel-wise mean
``mu`` and variance ``var``, but never a key:

1. estimates ``a`` from the spread across the mixtures: their variance is ``(1-a)^2`` times the
   references', so ``a_hat = 1 - sqrt(sum_v var_k(m_k) / sum_v var(v))`` over the population's
   anatomy (with K = 1 there is no spread: the prior ``attack.tta_average.prior_a``);
2. averages the mixtures, which cancels the references' individual part, removes
   ``(1 - a_hat) * mu`` and divides by ``a_hat``.

Scored for each K (``attack.tta_average.ks``, those the reference pool allows) by the error of
``a_hat``, 3D MS-SSIM between the recovered and the true target, and the linkage rate of the
recovered targets against the :mod:`~privbench.attacks.linkage` gallery; beside the calibration
guesses: the public mean as the guess (template), one mixture as the guess, and an oracle that
runs the same recovery with the true ``a``. The headline numbers are those at the K the client
uses (``mixup.tta``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from privbench import card as cards
from privbench import figures
from privbench.attacks.base import Attack, AttackResult, observe_test_scans
from privbench.attacks.linkage import Gallery, build_gallery, link
from privbench.config import RunConfig
from privbench.defenses.base import Defense
from privbench.metrics import ms_ssim3d
from privbench.mixing import MIN_WEIGHT
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, Task

SEED_OFFSET = 32452843  # the attack's keys are drawn apart from the evaluation's and other attacks'
CSV = "tta_average.csv"
PNG = "tta_average.png"


def estimate_a(mixtures: torch.Tensor, population_variance: torch.Tensor, inside: torch.Tensor,
               prior: float = 0.5) -> float:
    """``a_hat`` from K mixtures ``[K,1,D,H,W]`` of one target: ``1 - sqrt`` of their total
    variance across K over the population's, inside ``inside``; ``prior`` when K = 1."""
    if mixtures.shape[0] < 2:
        return prior
    spread = mixtures[:, 0][:, inside].double().var(0).sum()
    ratio = float(spread / population_variance[inside].double().sum().clamp(min=1e-12))
    return min(max(1 - ratio ** 0.5, MIN_WEIGHT), 1.0)


def recover(mixtures: torch.Tensor, a: float, mean: torch.Tensor) -> torch.Tensor:
    """The target ``[1,1,D,H,W]`` from K mixtures with weight ``a``: (mean_k m_k - (1-a) mu) / a."""
    return ((mixtures.float().mean(0, keepdim=True) - (1 - a) * mean) / a).clamp(0, 1)


@register_attack("tta-average", description="Average the K mixtures of a reference-TTA request, estimate a "
                 "from their spread, subtract the public mean (MS-SSIM, linkage per K)",
                 paper="privbench audit (beyond Kim et al., IPMI 2023)", requires=(PUBLIC_POOL,))
class TtaAverage(Attack):
    """Recover each target from the K mixtures a TTA request sends, with public statistics only."""

    name = "tta-average"
    headline = "linkage_top1"
    applies_to = ("mixup",)
    observes = "the K mixtures of each test scan's TTA request; the public pool's mean and variance; a gallery"

    def run(self, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True) -> AttackResult:
        settings = cfg.attack.tta_average
        pool = len(task.scans("reference"))
        ks = sorted(k for k in {*settings.ks, cfg.mixup.tta} if k <= pool)
        gallery = build_gallery(task)
        seen, truth = observe_test_scans(defense, task, seed=cfg.seed + SEED_OFFSET, k=max(ks))
        requests, truth_a, subjects, sessions = seen.proxies, truth.weights, truth.subjects, truth.sessions
        targets = torch.cat(truth.images)
        inside = gallery.mean > 0
        rows = []
        for k in ks:  # the attacker's work: mixtures and public statistics in, targets out
            a_hat = [estimate_a(m[:k], gallery.variance, inside, settings.prior_a) for m in requests]
            guesses = torch.cat([recover(m[:k], a, gallery.mean) for m, a in zip(requests, a_hat)])
            oracle = torch.cat([recover(m[:k], a, gallery.mean) for m, a in zip(requests, truth_a)])
            rows.append({"k": k, "a_abs_error": float(torch.tensor(a_hat).sub(torch.tensor(truth_a)).abs().mean()),
                         **_scores("", guesses, targets, subjects, sessions, gallery),
                         **_scores("oracle_a_", oracle, targets, subjects, sessions, gallery)})
        first = torch.cat([m[:1] for m in requests]).float()
        mixture = _scores("mixture_", first, targets, subjects, sessions, gallery)
        template = float(ms_ssim3d(gallery.mean.expand_as(targets[:, 0])[:, None], targets, data_range=1.0).mean())
        table = pd.DataFrame(rows).assign(**mixture, template_msssim=template,
                                          chance_top1=1 / len(set(gallery.subjects)))
        cards.write_text_atomic(run_dir / CSV, table.to_csv(index=False))
        figures.save_atomic(figures.tta_average_curve(table), run_dir / PNG)
        at = table[table.k == cfg.mixup.tta].iloc[0] if cfg.mixup.tta in ks else table.iloc[-1]
        metrics = {"k": int(at.k), "a_abs_error": float(at.a_abs_error), "msssim": float(at.msssim),
                   "linkage_top1": float(at.linkage_top1), "mixture_msssim": float(at.mixture_msssim),
                   "template_msssim": template, "oracle_a_msssim": float(at.oracle_a_msssim)}
        summary = table[["k", "a_abs_error", "msssim", "linkage_top1", "oracle_a_msssim", "mixture_msssim",
                         "template_msssim"]]
        return AttackResult(metrics, "tta-average", summary.to_dict(orient="records"), {"csv": CSV, "figure": PNG},
                            {"ks": ks, "skipped_ks": sorted(k for k in settings.ks if k > pool),
                             "reference_pool": pool, "prior_a": settings.prior_a, "n_requests": len(requests)})


def _scores(prefix: str, guesses: torch.Tensor, targets: torch.Tensor, subjects: list[str],
            sessions: list[str], gallery: Gallery) -> dict[str, float]:
    """MS-SSIM of guesses to their targets (mean, std) and the guesses' top-1 linkage rate."""
    ssim = ms_ssim3d(guesses, targets.float(), data_range=1.0)
    linked = link(guesses, subjects, sessions, gallery, msssim=False)["correlation"]
    return {f"{prefix}msssim": float(ssim.mean()), f"{prefix}msssim_std": float(ssim.std(unbiased=False)),
            f"{prefix}linkage_top1": linked["top1"]}
