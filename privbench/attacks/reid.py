"""``reid``: subject re-identification by MS-SSIM nearest neighbour (Kim et al., IPMI 2023, Table 2).

Every test scan is sent through the defense with a fresh key. The attacker, who sees the
requests (``attack.reid.observe=proxy``) or the server's answers (``observe=output``), scores
every pair by 3D MS-SSIM and names each request after its most similar other request. Scored by
:func:`privbench.metrics.retrieval` (top-1, macro F1, mAP) against the subjects the harness
kept. Calibration in the same table: the same attack on the unprotected scans, and chance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from privbench import figures
from privbench.attacks.base import Attack, AttackResult, Truth, observe_test_scans
from privbench.config import RunConfig
from privbench.defenses.base import Defense
from privbench.metrics import ms_ssim3d_pairs, retrieval
from privbench.registry import register_attack
from privbench.tasks.base import REPEATED_SCANS, Task

SEED_OFFSET = 7919  # the attack's keys are drawn apart from the utility evaluation's
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


@register_attack("reid", description="Re-identify subjects by MS-SSIM nearest neighbour among "
                 "encoded scans (F1, mAP)", paper="Kim et al., IPMI 2023 (Table 2)", requires=(REPEATED_SCANS,))
class Reidentification(Attack):
    """MS-SSIM nearest-neighbour re-identification of the test subjects."""

    name = "reid"
    headline = "f1"
    observes = "every test scan's request to the server (or, with observe=output, its answer)"

    def run(self, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True) -> AttackResult:
        observe = cfg.attack.reid.observe
        seen, truth = observe_test_scans(defense, task, seed=cfg.seed + SEED_OFFSET,
                                         outputs=observe == "output")
        sim = similarity(seen.outputs if observe == "output" else seen.proxies)
        metrics = score(sim, truth)
        raw = score(similarity(truth.images), truth)  # the harness's baseline: unprotected scans
        figures.save_atomic(figures.similarity_heatmap(sim, truth.subjects, f"{defense.name}: {observe}"),
                            run_dir / HEATMAP)
        seen_as = {"proxy": "attack on the requests", "output": "attack on the server's answers"}[observe]
        table = [{"guess": seen_as, **metrics},
                 {"guess": "attack on the unprotected scans", **raw},
                 {"guess": "chance", "top1": metrics["chance"]}]
        label = "reid" if observe == "proxy" else f"reid-{observe}"
        return AttackResult(metrics, label, table, {"heatmap": HEATMAP},
                            {"observe": observe, "n_requests": len(truth.subjects),
                             "n_subjects": len(set(truth.subjects))})
