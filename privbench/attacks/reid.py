"""``reid``: subject re-identification by MS-SSIM nearest neighbour (Kim et al., IPMI 2023, Table 2).

Every test scan is sent through the defense with a fresh key. The attacker, who sees the
requests (``attack.reid.observe=proxy``) or the server's answers (``observe=output``, a grant),
in a shuffled order, scores every pair by 3D MS-SSIM; its guess is that similarity, each request
named after its most similar other request. The harness scores it by
:func:`privbench.metrics.retrieval` (top-1, macro F1, mAP) against the subjects the harness
kept, and by the ROC over every (request, subject) score (:mod:`privbench.roc`: AUC, TPR at
low FPR, the raw scores and a log-log ROC in the run folder). Calibration in the same table:
the same attack on the unprotected scans, and chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from privbench import figures, roc
from privbench.attacks.base import Attack, AttackResult, Observation, Truth
from privbench.config import RunConfig, require
from privbench.metrics import ms_ssim3d_pairs, retrieval
from privbench.registry import register_attack
from privbench.tasks.base import REPEATED_SCANS
@dataclass
class ReidConfig:
    """MS-SSIM re-identification (Kim et al., IPMI 2023, Table 2)."""

    observe: str = "proxy"  # proxy: what the server receives | output: what it returns (a grant)

    def validate(self, run: RunConfig) -> None:
        require((self.observe in ("proxy", "output"), "attack.reid.observe must be proxy or output"))


HEATMAP = "reid_similarity.png"


def similarity(views: list[torch.Tensor]) -> torch.Tensor:
    """The attacker's all-pairs MS-SSIM ``[N,N]`` between observed volumes ``[1,C,D,H,W]``
    (multi-channel outputs, such as class probabilities, score the mean over channels)."""
    stacked = torch.cat(views).float()
    channels = range(1, stacked.shape[1]) if stacked.shape[1] > 1 else range(1)  # skip background
    return torch.stack([ms_ssim3d_pairs(stacked[:, c:c + 1]) for c in channels]).mean(0)


def score(sim: torch.Tensor, truth: Truth) -> dict[str, float]:
    """Nearest-neighbour re-identification scores of a similarity matrix."""
    out = retrieval(1 - sim, truth.subjects)
    return {k: float(out[k]) for k in ("top1", "f1", "map", "chance")}


def identity_scores(sim: torch.Tensor, truth: Truth) -> roc.IdentityScores:
    """Every request's score for every subject: its best similarity with another request of them."""
    return roc.identity_scores(sim.double().numpy(), truth.subjects, truth.subjects,
                               exclude=torch.eye(len(truth.subjects), dtype=torch.bool).numpy())


@register_attack("reid", description="Re-identify subjects by MS-SSIM nearest neighbour among "
                 "encoded scans (F1, mAP)", paper="Kim et al., IPMI 2023 (Table 2)", requires=(REPEATED_SCANS,),
                 config=ReidConfig)
class Reidentification(Attack):
    """MS-SSIM nearest-neighbour re-identification of the test subjects."""

    name = "reid"
    headline = "f1"
    identifies = "top1"
    observes = "every test scan's request to the server (or, with observe=output, its answer)"

    def granted(self, config: ReidConfig, defense: str = "") -> tuple[str, ...]:
        return ("answers",) if config.observe == "output" else ()

    def reconstruct(self, observation: Observation) -> torch.Tensor:
        """The all-pairs similarity of what the attacker sees: its guess of who is who."""
        seen = observation.answers if observation.config.observe == "output" else observation.requests
        return similarity(seen)

    def score(self, guesses: torch.Tensor, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        observe = observation.config.observe
        label = "reid" if observe == "proxy" else f"reid-{observe}"
        clean = similarity(truth.images)  # calibration: the same attack on unprotected scans
        low_fpr = roc.report({"attack": identity_scores(guesses, truth), "unprotected": identity_scores(clean, truth)},
                             run_dir, label, f"reid on {observation.defense.name}: {observe}")
        metrics = score(guesses, truth) | roc.headline(low_fpr["attack"])
        raw = score(clean, truth) | roc.headline(low_fpr["unprotected"])
        figures.save_atomic(figures.similarity_heatmap(guesses, truth.subjects,
                                                       f"{observation.defense.name}: {observe}"), run_dir / HEATMAP)
        seen_as = {"proxy": "attack on the requests", "output": "attack on the server's answers"}[observe]
        table = [{"guess": seen_as, **metrics},
                 {"guess": "attack on the unprotected scans", **raw},
                 {"guess": "chance", "top1": metrics["chance"], "auc": 0.5}]
        return AttackResult(metrics, label, table, {"heatmap": HEATMAP, **roc.files(label)},
                            {"observe": observe, "n_requests": len(truth.subjects),
                             "n_subjects": len(set(truth.subjects)),
                             "roc_pairs": {k: low_fpr["attack"][k] for k in ("n_positive", "n_negative")}})
