"""``ssim-pairs``: Privacy-Net's own re-identification protocol, as a calibration row.

Privacy-Net (Kim et al., IEEE TMI 2021; its ``ms_ssim_classify.py``, which despite its name
computes single-scale SSIM) asks whether two encoded scans are of one subject by the SSIM of one
co-located crop of each, thresholded: the threshold is the best of 100 evenly spaced between the
mean SSIM of different-subject and of same-subject pairs of encoded training scans, and the
accuracy is reported on held-out pairs. Here the attacker tunes that threshold on pairs of the
public pool encoded with the server's copy of the encoding (grants ``weights`` and
``public_pool``: keys it draws itself) and classifies every pair of test requests; the harness
scores the balanced accuracy (the mean of the accuracies on same- and different-subject pairs:
Privacy-Net's pairs were half and half). Crops are the preset's patch size (Privacy-Net: 64³ at
1 mm, the same extent as 32³ at the quick preset's 2 mm), one random co-located crop per pair;
SSIM uses a Gaussian window (skimage's default, which Privacy-Net used, is a uniform one).
Calibration: the same protocol on the unprotected scans, and chance (0.5).

It reports no top-1 and so never enters the worst case: it shows whether a gap to a published
number is one of protocol, beside the MS-SSIM ``reid`` the Mixup-Privacy paper used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privbench.attacks.base import Attack, AttackResult, Observation, Truth
from privbench.config import RunConfig, require
from privbench.metrics import ms_ssim3d
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS

THRESHOLDS = 100  # evenly spaced candidates between the two classes' mean SSIM (Privacy-Net)
HEAD = 0.05  # a crop is centred on a voxel brighter than this


@dataclass
class SsimPairsConfig:
    """Privacy-Net's SSIM-threshold pair classification (calibration)."""

    keys: int = 2  # encodings of each public scan (fresh keys; one where the encoding has no key) for tuning

    def validate(self, run: RunConfig) -> None:
        require((1 <= self.keys <= 100, "attack.ssim_pairs.keys must be in [1, 100]"))


@dataclass
class PairGuesses:
    """Each test pair ``(i, j)`` (request indices, i < j), its SSIM and the attacker's verdict."""

    pairs: list[tuple[int, int]]
    ssim: np.ndarray
    same: np.ndarray
    threshold: float


def pair_ssim(volumes: torch.Tensor, pairs: list[tuple[int, int]], size: int, rng: np.random.Generator) -> np.ndarray:
    """Single-scale SSIM of one random co-located ``size``-cube crop of each pair of ``volumes``
    ``[N,1,D,H,W]`` (smaller where the volume is), centred where the first volume shows the head."""
    size = min(size, *volumes.shape[2:])
    out = []
    for i, j in pairs:
        head = torch.nonzero(volumes[i, 0] > HEAD)
        centre = head[rng.integers(len(head))] if len(head) else torch.tensor(volumes.shape[2:]) // 2
        corner = [int(min(max(c - size // 2, 0), n - size)) for c, n in zip(centre, volumes.shape[2:])]
        crop = (slice(None), *(slice(c, c + size) for c in corner))
        out.append(float(ms_ssim3d(volumes[i][crop][None], volumes[j][crop][None], weights=[1.0])[0]))
    return np.asarray(out)


def tuned_threshold(ssim: np.ndarray, same: np.ndarray) -> float:
    """Privacy-Net's threshold: of 100 between the classes' mean SSIM (between the smallest and
    largest SSIM where the pairs hold one class only), the best balanced accuracy."""
    ends = [float(ssim[same].mean()), float(ssim[~same].mean())] if same.any() and (~same).any() \
        else [float(ssim.min()), float(ssim.max())]
    candidates = np.linspace(min(ends), max(ends), THRESHOLDS)
    return float(max(candidates, key=lambda t: (balanced_accuracy(ssim >= t, same), -t)))


def balanced_accuracy(said_same: np.ndarray, same: np.ndarray) -> float:
    """The mean of the accuracies on same- and on different-subject pairs (over the classes present)."""
    return float(np.mean([(said_same[group] == same[group]).mean() for group in (same, ~same) if group.any()]))


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def classify(volumes: torch.Tensor, tuning: torch.Tensor, tuning_subjects: list[str], size: int,
             rng: np.random.Generator) -> PairGuesses:
    """Tune on every pair of ``tuning`` (labelled), then classify every pair of ``volumes``."""
    tune_pairs = list(itertools.combinations(range(len(tuning)), 2))
    tune_same = np.array([tuning_subjects[i] == tuning_subjects[j] for i, j in tune_pairs])
    threshold = tuned_threshold(pair_ssim(tuning, tune_pairs, size, rng), tune_same)
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    ssim = pair_ssim(volumes, pairs, size, rng)
    return PairGuesses(pairs, ssim, ssim >= threshold, threshold)


@register_attack("ssim-pairs", description="Privacy-Net's protocol: same subject or not, by the SSIM of "
                 "co-located crops of two requests against a threshold tuned on encoded public pairs (calibration)",
                 paper="Kim et al., IEEE TMI 2021 (ms_ssim_classify.py)",
                 requires=(REPEATED_SCANS, PUBLIC_POOL), config=SsimPairsConfig)
class SsimPairs(Attack):
    """Privacy-Net's SSIM-threshold pair classification of the test requests."""

    name = "ssim-pairs"
    headline = "pair_accuracy"
    applies_to = ("privacy-net", "deformation")  # the threshold is tuned through the server's copy of the encoding
    grants = ("weights", "public_pool")
    observes = ("every test scan's request; a copy of the trained encoding (white-box) and public scans "
                "with their identities, to tune the SSIM threshold")

    def reconstruct(self, observation: Observation) -> PairGuesses:
        rng = np.random.default_rng(observation.seed)
        public = observation.public.images()
        subjects = [scan.subject for scan in observation.public.scans()]
        generator = torch.Generator().manual_seed(observation.seed)
        keys = 1 if observation.white_box.deterministic else observation.config.keys  # no duplicate pairs
        encoded = torch.cat([observation.white_box.encode(public, generator) for _ in range(keys)])
        return classify(torch.cat(observation.requests), encoded, subjects * keys, observation.runtime.patch_size, rng)

    def score(self, guesses: PairGuesses, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        same = np.array([truth.subjects[i] == truth.subjects[j] for i, j in guesses.pairs])
        accuracy = balanced_accuracy(guesses.same, same)
        public = observation.public.images()  # calibration: the same protocol without the encoding
        subjects = [scan.subject for scan in observation.public.scans()]
        raw = classify(torch.cat(truth.images), public, subjects, observation.runtime.patch_size,
                       np.random.default_rng(observation.seed))
        raw_accuracy = balanced_accuracy(raw.same, same)
        metrics = {"pair_accuracy": accuracy, "threshold": guesses.threshold,
                   "ssim_same": _mean(guesses.ssim[same]), "ssim_different": _mean(guesses.ssim[~same]),
                   "unprotected_pair_accuracy": raw_accuracy, "chance": 0.5}
        table = [{"guess": "SSIM threshold on the requests", "pair_accuracy": accuracy,
                  "threshold": guesses.threshold},
                 {"guess": "the same on the unprotected scans", "pair_accuracy": raw_accuracy,
                  "threshold": raw.threshold},
                 {"guess": "chance", "pair_accuracy": 0.5}]
        return AttackResult(metrics, self.name, table, {},
                            {"pairs": len(guesses.pairs), "same_subject_pairs": int(same.sum()),
                             "crop": min(observation.runtime.patch_size, *truth.images[0].shape[2:])})
