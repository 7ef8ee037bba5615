"""ssim-pairs: Privacy-Net's SSIM-threshold pair classification."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from privbench.attacks.ssim_pairs import balanced_accuracy, classify, tuned_threshold


def test_the_threshold_is_the_best_of_100_between_the_class_means():
    ssim = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.6])
    same = np.array([True, True, True, False, False, False])
    threshold = tuned_threshold(ssim, same)
    assert 0.6 < threshold <= 0.7 and balanced_accuracy(ssim >= threshold, same) == 1.0
    candidates = np.linspace(ssim[~same].mean(), ssim[same].mean(), 100)
    assert threshold == candidates[candidates > 0.6].min()  # of the perfect ones, the lowest
    assert balanced_accuracy(np.array([True, False, True]), np.array([True, True, False])) == 0.25
    assert balanced_accuracy(np.array([True]), np.array([True])) == 1.0  # one class present


def _volumes(subjects, sessions, noise, seed):
    """Smooth anatomy per subject (the same in every session), plus session noise."""
    rng = np.random.default_rng(seed)
    anatomy = {s: ndimage.gaussian_filter(rng.random((24, 24, 24)), 2) for s in sorted(set(subjects))}
    out = [anatomy[s] + noise * ndimage.gaussian_filter(rng.random((24, 24, 24)), 1) for s, _ in zip(subjects, sessions)]
    return torch.tensor(np.stack(out), dtype=torch.float32)[:, None]


@pytest.mark.parametrize("noise, accuracy", [(0.05, (0.95, 1.0)), (5.0, (0.3, 0.7))])
def test_pairs_of_one_subject_are_told_apart_until_the_noise_hides_them(noise, accuracy):
    """Scans of one subject share their anatomy: SSIM tells pairs apart while the session noise is
    small, and not when the noise (an encoding that hides identity) dominates."""
    subjects = ["a", "a", "b", "b", "c", "c", "d", "d"]
    tuning = _volumes(subjects, range(8), noise, seed=0)
    test = _volumes(subjects, range(8), noise, seed=1)
    guesses = classify(test, tuning, subjects, size=16, rng=np.random.default_rng(0))
    same = np.array([subjects[i] == subjects[j] for i, j in guesses.pairs])
    assert len(guesses.pairs) == 28 and same.sum() == 4
    assert accuracy[0] <= balanced_accuracy(guesses.same, same) <= accuracy[1]
