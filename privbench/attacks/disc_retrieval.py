"""``disc-retrieval``: Privacy-Net's retrieval protocol with the defender's own discriminator.

Privacy-Net (Kim et al., IEEE TMI 2021; its ``retrival_analysis.py``) measures identity leakage
by embedding whole encoded volumes with the feature extractor of the Siamese discriminator it
was trained against, ranking the other volumes by the angle between embeddings (arccos of the
cosine, over π) and reporting the mean average precision over the top 5,
``AP = (1 / R) Σ_{k<=5} P@k · rel_k`` with R the query subject's other scans. The server trained
that discriminator with the encoder, so the attacker is granted a copy of it
(``discriminator``). The harness scores the mAP@5 and the nearest neighbour's top-1, beside the
same embedder on the unprotected scans and chance. The embedder looks at a volume cropped to a
multiple of its pooling (centred), its last feature map centred and normalised as in training.

A discriminator that its encoder learned to fool is the weakest identity attacker there is,
which is why this is a calibration row: a gap between Privacy-Net's published mAP and privbench's
MS-SSIM re-identification may be one of protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from privbench.attacks.base import Attack, AttackResult, Observation, Truth
from privbench.metrics import retrieval
from privbench.registry import register_attack
from privbench.tasks.base import REPEATED_SCANS

TOP = 5  # Privacy-Net's mAP looks at the 5 nearest volumes


def angles(embedder: torch.nn.Module, volumes: list[torch.Tensor]) -> torch.Tensor:
    """The angle between every two volumes' embeddings, over π: ``[N,N]`` in [0, 1]."""
    with torch.no_grad():
        codes = torch.cat([embedder(volume[:1].float()) for volume in volumes])
    cosine = (codes @ codes.T).clamp(-1, 1)
    return torch.arccos(cosine) / torch.pi


def map_at(distance: torch.Tensor, subjects: list[str], top: int = TOP) -> float:
    """Mean over the queries whose subject has another volume of ``Σ_{k<=top} P@k rel_k / R``."""
    d = distance.double().numpy()
    ids = np.asarray(subjects)
    scores = []
    for i in range(len(ids)):
        others = np.delete(np.arange(len(ids)), i)
        relevant = ids[others[np.argsort(d[i, others], kind="stable")]] == ids[i]
        if relevant.any():
            hits = relevant[:top]
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            scores.append(float((precision * hits).sum() / relevant.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def scored(distance: torch.Tensor, subjects: list[str]) -> dict[str, float]:
    found = retrieval(distance, subjects)
    return {"map5": map_at(distance, subjects), "top1": found["top1"], "map": found["map"], "chance": found["chance"]}


@register_attack("disc-retrieval", description="Privacy-Net's protocol: retrieval of whole requests by the "
                 "embedding of the defender's own identity discriminator, mAP@5 (calibration)",
                 paper="Kim et al., IEEE TMI 2021 (retrival_analysis.py)", requires=(REPEATED_SCANS,))
class DiscriminatorRetrieval(Attack):
    """Rank the test requests by the trained discriminator's embedding."""

    name = "disc-retrieval"
    headline = "map5"
    identifies = "top1"
    applies_to = ("privacy-net", "deformation")  # the defenses trained against a discriminator
    grants = ("discriminator",)
    observes = "every test scan's request; a copy of the identity discriminator the defense was trained against"

    def reconstruct(self, observation: Observation) -> torch.Tensor:
        return angles(observation.discriminator, observation.requests)

    def score(self, guesses: torch.Tensor, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        metrics = scored(guesses, truth.subjects)
        raw = scored(angles(observation.discriminator, truth.images), truth.subjects)
        table = [{"guess": "discriminator embedding of the requests", **metrics},
                 {"guess": "the same on the unprotected scans", **raw},
                 {"guess": "chance", "top1": metrics["chance"]}]
        return AttackResult(metrics | {"unprotected_map5": raw["map5"], "unprotected_top1": raw["top1"]},
                            self.name, table, {}, {"n_requests": len(truth.subjects), "top": TOP})
