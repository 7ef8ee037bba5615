"""Low-FPR statistics of identity attacks (the ML Privacy Meter / LiRA way of reporting).

An identity attack (reid, linkage) scores every request against every identity it could be.
Averages such as top-1 hide whether *some* patients are identified with near certainty, so the
audit also reports the ROC over all (request, identity) scores, a match being the request's own
identity: AUC and the TPR at 1%, 0.1% and 0% FPR, with the raw scores saved so anyone can
recompute them.

Conventions: an identity's score for a request is its best-scoring scan's (the scan the request
was made from, and for reid the request itself, are never compared); ``TPR at FPR <= x`` is the
highest TPR of a threshold whose FPR does not exceed ``x`` (no interpolation: a threshold the
attacker could actually use). With ``n`` non-matching pairs the smallest FPR above 0 is ``1/n``,
so a TPR at 0.1% FPR from fewer than 1,000 negatives equals the TPR at 0% (``n_negative`` is
reported beside it). :func:`report` writes the raw scores and the log-log ROC into the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from privbench import figures, io

FPRS = {"1pct": 0.01, "0.1pct": 0.001, "0": 0.0}  # name in the metric -> FPR


@dataclass(frozen=True)
class IdentityScores:
    """One row per (request, candidate identity): the attacker's score and whether it is a match."""

    request: np.ndarray  # index of the request (in the observation's order)
    truth: list[str]  # the request's own identity
    identity: list[str]  # the candidate identity
    score: np.ndarray
    match: np.ndarray  # bool: identity == truth

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"request": self.request, "request_identity": self.truth,
                             "candidate_identity": self.identity, "score": self.score,
                             "match": self.match.astype(int)})


def identity_scores(similarity: Any, probe_ids: Sequence[str], gallery_ids: Sequence[str],
                    exclude: Any = None) -> IdentityScores:
    """Every probe's score for every gallery identity from item similarities ``[P, G]`` (higher
    is closer): the best of that identity's items the probe may be compared with (``exclude
    [P, G]`` marks the others). Reid passes its square request matrix with the diagonal excluded."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape != (len(probe_ids), len(gallery_ids)):
        raise ValueError(f"identity_scores: similarity {sim.shape} does not match "
                         f"{len(probe_ids)} probes x {len(gallery_ids)} items")
    blocked = np.zeros(sim.shape, bool) if exclude is None else np.asarray(exclude, dtype=bool)
    gallery = np.asarray(gallery_ids, dtype=object)
    rows: tuple[list, list, list, list] = ([], [], [], [])
    for p, who in enumerate(probe_ids):
        for identity in dict.fromkeys(gallery_ids):
            allowed = (gallery == identity) & ~blocked[p]
            if allowed.any():
                for column, value in zip(rows, (p, who, identity, sim[p, allowed].max())):
                    column.append(value)
    request, truth, identity, score = rows
    if not np.all(np.isfinite(score)):
        raise ValueError("identity_scores: the attack produced a non-finite score")
    return IdentityScores(np.asarray(request, int), truth, identity, np.asarray(score, np.float64),
                          np.asarray([t == i for t, i in zip(truth, identity)], bool))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """The highest TPR among ROC points whose FPR is at most ``limit``."""
    return float(tpr[fpr <= limit].max())


def statistics(scores: IdentityScores) -> dict[str, float | None]:
    """AUC and TPR at the :data:`FPRS` of the scores, with the counts of matches and
    non-matches (None, not a number, when one of the two is empty: nothing to tell apart)."""
    n_pos, n_neg = int(scores.match.sum()), int((~scores.match).sum())
    out: dict[str, float | None] = {"n_positive": n_pos, "n_negative": n_neg}
    if n_pos == 0 or n_neg == 0:
        return out | {"auc": None} | {f"tpr_at_{name}_fpr": None for name in FPRS}
    fpr, tpr, _ = roc_curve(scores.match, scores.score, drop_intermediate=False)
    out["auc"] = float(roc_auc_score(scores.match, scores.score))
    return out | {f"tpr_at_{name}_fpr": tpr_at_fpr(fpr, tpr, limit) for name, limit in FPRS.items()}


def headline(stats: dict[str, float | None]) -> dict[str, float | None]:
    """The statistics a card's metrics carry (the counts go to its settings)."""
    return {k: v for k, v in stats.items() if not k.startswith("n_")}


def curve(scores: IdentityScores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC's (FPR, TPR) points, every threshold kept."""
    fpr, tpr, _ = roc_curve(scores.match, scores.score, drop_intermediate=False)
    return fpr, tpr


def report(scores: dict[str, IdentityScores], run_dir: Path, name: str, title: str) -> dict[str, dict]:
    """Statistics of each set of scores (the attack's first, then its calibration rows), written
    beside the card: every raw score in ``<name>_scores.csv`` (column ``scored``: the label)
    and the log-log ROC curves in ``<name>_roc.png``. Returns the statistics by label."""
    frames = [s.frame().assign(scored=label) for label, s in scores.items()]
    io.write_text(run_dir / f"{name}_scores.csv", pd.concat(frames).to_csv(index=False))
    curves = {label: curve(s) for label, s in scores.items() if s.match.any() and not s.match.all()}
    figures.save_atomic(figures.roc_curves(curves, title), run_dir / f"{name}_roc.png")
    return {label: statistics(s) for label, s in scores.items()}


def files(name: str) -> dict[str, str]:
    """The card's record of what :func:`report` wrote."""
    return {"scores": f"{name}_scores.csv", "roc": f"{name}_roc.png"}
