"""``histogram-reid``: re-identify subjects by the intensity histograms of their requests.

A cheap attacker that ignores anatomy's place and looks at its proportions: each request's
histogram of intensities inside its non-zero voxels (``attack.histogram_reid.bins`` bins over
[0, 1]); requests are compared by the L1 distance of their normalised histograms. Its guess is
that similarity; the harness scores it like ``reid`` (top-1, macro F1, mAP, chance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from privbench.attacks.base import Attack, AttackResult, Observation, Truth
from privbench.attacks import reid
from privbench.config import RunConfig, require
from privbench.registry import register_attack
from privbench.tasks.base import REPEATED_SCANS


@dataclass
class HistogramReidConfig:
    """How finely the attacker bins the intensities."""

    bins: int = 32

    def validate(self, run: RunConfig) -> None:
        require((2 <= self.bins <= 4096, "attack.histogram_reid.bins must be in [2, 4096]"))


def histograms(volumes: list[torch.Tensor], bins: int) -> torch.Tensor:
    """Normalised intensity histograms ``[N,bins]`` of the non-zero voxels of each volume."""
    rows = []
    for volume in volumes:
        values = volume[:1].float().flatten()  # the first image of a request
        values = values[values > 0].clamp(0, 1)
        counts = torch.histc(values, bins=bins, min=0, max=1) if len(values) else torch.zeros(bins)
        rows.append(counts / counts.sum().clamp(min=1))
    return torch.stack(rows)


@register_attack("histogram-reid", description="Re-identify subjects by the intensity histograms of "
                 "their requests (F1, mAP)", paper="privbench example plugin", requires=(REPEATED_SCANS,),
                 config=HistogramReidConfig)
class HistogramReid(Attack):
    """Nearest neighbour of intensity histograms among the requests."""

    name = "histogram-reid"
    headline = "f1"
    identifies = "top1"
    observes = "every test scan's request to the server"

    def reconstruct(self, observation: Observation) -> torch.Tensor:
        """Similarity ``[N,N]``: one minus half the L1 distance of the histograms (1: identical)."""
        h = histograms(observation.requests, observation.config.bins)
        return 1 - 0.5 * torch.cdist(h, h, p=1)

    def score(self, guesses: torch.Tensor, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        metrics = reid.score(guesses, truth)  # reid's scoring: nearest neighbour, F1, mAP, chance
        table = [{"guess": "histograms of the requests", **metrics}, {"guess": "chance", "top1": metrics["chance"]}]
        return AttackResult(metrics, "histogram-reid", table, {}, {"bins": observation.config.bins,
                                                                   "n_requests": len(truth.subjects)})
