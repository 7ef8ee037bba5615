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
recovered targets against the :mod:`~privbench.attacks.linkage` gallery (the harness's, for
scoring: this attacker is granted the public pool only); beside the calibration
guesses: the public mean as the guess (template), one mixture as the guess, and an oracle that
runs the same recovery with the true ``a``. The headline numbers are those at the K the client
uses (``mixup.tta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from privbench import card as cards
from privbench import figures
from privbench.attacks.base import (Attack, AttackResult, Client, Gallery, Observation, PublicPool, Truth,
                                    Victims, build_gallery)
from privbench.attacks.linkage import link
from privbench.config import RunConfig, require
from privbench.metrics import ms_ssim3d
from privbench.mixing import MIN_WEIGHT
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL
@dataclass
class TtaAverageConfig:
    """Averaging the K mixtures of a reference-TTA request (privbench's audit beyond the paper)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 30)  # K values scored (those the reference pool allows), plus mixup.tta
    prior_a: float = 0.5  # the attacker's guess of a when K = 1 (no spread to estimate it from)

    def validate(self, run: RunConfig) -> None:
        require((len(self.ks) >= 1 and min(self.ks) >= 1, "attack.tta_average.ks must be positive ints"),
                (0 < self.prior_a <= 1, "attack.tta_average.prior_a must be in (0, 1]"))


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
                 paper="privbench audit (beyond Kim et al., IPMI 2023)", requires=(PUBLIC_POOL,),
                 config=TtaAverageConfig)
class TtaAverage(Attack):
    """Recover each target from the K mixtures a TTA request sends, with public statistics only."""

    name = "tta-average"
    headline = "linkage_top1"
    identifies = "linkage_top1"  # of the recovered targets
    recovers = "msssim"
    naive = {"recovery": {"mixture as guess": "mixture_msssim"}}
    applies_to = ("mixup",)
    grants = ("public_pool",)
    observes = "the K mixtures of each test scan's TTA request; the public pool's mean and variance"

    def victims(self, client: Client, config: TtaAverageConfig) -> Victims:
        """Every test scan sent with as many references as the largest K scored (that the
        client's reference pool allows); the gallery that scores the recovered targets."""
        pool = len(client.task.scans("reference"))
        ks = [k for k in {*config.ks, client.cfg.mixup.tta} if k <= pool]
        victims = client.send_test_scans(k=max(ks))
        victims.truth.shared |= {"gallery": build_gallery(client.task, PublicPool(client.task)),
                                 "reference_pool": pool}
        return victims

    def reconstruct(self, observation: Observation) -> dict[int, tuple[list[float], torch.Tensor]]:
        """For each K (the config's and the client's public ``mixup.tta``, up to the K a request
        holds): the estimated weights and the recovered targets ``[N,1,D,H,W]``."""
        requests, config = observation.requests, observation.config
        mean, variance = observation.public.statistics()
        inside = mean > 0
        guesses = {}
        for k in scored_ks(config.ks, observation.defense.config["mixup"]["tta"], len(requests[0])):
            a_hat = [estimate_a(m[:k], variance, inside, config.prior_a) for m in requests]
            guesses[k] = a_hat, torch.cat([recover(m[:k], a, mean) for m, a in zip(requests, a_hat)])
        return guesses

    def score(self, guesses: dict[int, tuple[list[float], torch.Tensor]], truth: Truth,
              observation: Observation, run_dir: Path) -> AttackResult:
        gallery, requests, truth_a = truth.shared["gallery"], observation.requests, truth.weights
        targets, subjects, sessions = torch.cat(truth.images), truth.subjects, truth.sessions
        rows = []
        for k, (a_hat, recovered) in guesses.items():
            oracle = torch.cat([recover(m[:k], a, gallery.mean) for m, a in zip(requests, truth_a)])
            rows.append({"k": k, "a_abs_error": float(torch.tensor(a_hat).sub(torch.tensor(truth_a)).abs().mean()),
                         **_scores("", recovered, targets, subjects, sessions, gallery),
                         **_scores("oracle_a_", oracle, targets, subjects, sessions, gallery)})
        first = torch.cat([m[:1] for m in requests]).float()
        mixture = _scores("mixture_", first, targets, subjects, sessions, gallery)
        template = float(ms_ssim3d(gallery.mean.expand_as(targets[:, 0])[:, None], targets, data_range=1.0).mean())
        table = pd.DataFrame(rows).assign(**mixture, template_msssim=template,
                                          chance_top1=1 / len(set(gallery.subjects)))
        cards.write_text_atomic(run_dir / CSV, table.to_csv(index=False))
        figures.save_atomic(figures.tta_average_curve(table), run_dir / PNG)
        client_k = observation.defense.config["mixup"]["tta"]
        at = table[table.k == client_k].iloc[0] if client_k in guesses else table.iloc[-1]
        metrics = {"k": int(at.k), "a_abs_error": float(at.a_abs_error), "msssim": float(at.msssim),
                   "linkage_top1": float(at.linkage_top1), "mixture_msssim": float(at.mixture_msssim),
                   "template_msssim": template, "oracle_a_msssim": float(at.oracle_a_msssim)}
        summary = table[["k", "a_abs_error", "msssim", "linkage_top1", "oracle_a_msssim", "mixture_msssim",
                         "template_msssim"]]
        pool, config = truth.shared["reference_pool"], observation.config
        return AttackResult(metrics, "tta-average", summary.to_dict(orient="records"), {"csv": CSV, "figure": PNG},
                            {"ks": list(guesses), "skipped_ks": sorted(k for k in config.ks if k > pool),
                             "reference_pool": pool, "prior_a": config.prior_a, "n_requests": len(requests)})


def scored_ks(ks: tuple[int, ...], client_k: int, available: int) -> list[int]:
    """The K values scored: the config's and the client's, those a request of ``available``
    mixtures allows, ascending."""
    return sorted(k for k in {*ks, client_k} if k <= available)


def _scores(prefix: str, guesses: torch.Tensor, targets: torch.Tensor, subjects: list[str],
            sessions: list[str], gallery: Gallery) -> dict[str, float]:
    """MS-SSIM of guesses to their targets (mean, std) and the guesses' top-1 linkage rate."""
    ssim = ms_ssim3d(guesses, targets.float(), data_range=1.0)
    linked = link(guesses, subjects, sessions, gallery, msssim=False)["correlation"]
    return {f"{prefix}msssim": float(ssim.mean()), f"{prefix}msssim_std": float(ssim.std(unbiased=False)),
            f"{prefix}linkage_top1": linked["top1"]}
