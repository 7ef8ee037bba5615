"""reference-recovery: unmixing many requests of one client through the references they share."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privbench import config
from privbench.attacks import reference_recovery as rr
from privbench.attacks.base import execute
from privbench.defenses.mixup import MixupPrivacy
from privbench.registry import create_task


def smooth_volumes(n, size=12, seed=0):
    """``n`` random smooth volumes in [0, 1] (blurred noise), like scans of different people."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size, size, size, generator=g)
    kernel = torch.ones(1, 1, 3, 3, 3) / 27
    return F.conv3d(noise, kernel, padding=1)[:, 0].clamp(0, 1)


def correlation(a, b):
    x, y = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (x / x.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T


def mixtures_of(targets, references, n, seed=1):
    rng = np.random.default_rng(seed)
    t, r = rng.integers(len(targets), size=n), rng.integers(len(references), size=n)
    a = rng.uniform(0.3, 0.7, size=n)
    mixed = torch.stack([a[i] * targets[t[i]] + (1 - a[i]) * references[r[i]] for i in range(n)]).float()
    return mixed, t, r, a


def test_noise_free_mixtures_sharing_references_give_the_references_back():
    volumes = smooth_volumes(7)
    targets, references = volumes[:3], volumes[3:]
    mixed, t, r, a = mixtures_of(targets, references, 60)  # each reference in ~15 requests
    fit = rr.unmix(mixed, trials=300, rounds=3, rank_tolerance=1e-4, seed=0)
    assert fit.rank == 7 and fit.residual < 1e-8  # the requests span exactly the 7 volumes, all explained
    match = correlation(references, fit.sources).max(1).values
    assert match.min() > 0.9999
    for i in range(len(mixed)):  # each request's two sources and weight, up to the order of the pair
        truth = {("t", t[i]), ("r", r[i])}
        found = {("t", int(correlation(targets, fit.sources[p:p + 1]).argmax())) if
                 correlation(targets, fit.sources[p:p + 1]).max() > 0.999 else
                 ("r", int(correlation(references, fit.sources[p:p + 1]).argmax())) for p in fit.pairs[i]}
        assert found == truth
        weight = fit.weights[i] if found and fit.pairs[i][0] == int(
            correlation(fit.sources, targets[t[i]][None]).argmax()) else 1 - fit.weights[i]
        assert weight == pytest.approx(a[i], abs=1e-4)


def test_one_request_per_reference_is_not_enough():
    """With fewer requests than volumes in them, the attacker cannot pin the references down."""
    volumes = smooth_volumes(7)
    mixed, *_ = mixtures_of(volumes[:3], volumes[3:], 4, seed=2)
    fit = rr.unmix(mixed, trials=300, rounds=3, rank_tolerance=1e-4, seed=0)
    assert fit.rank == 3 and correlation(volumes[3:], fit.sources).max(1).values.min() < 0.99


def test_the_attack_scores_references_targets_and_linkage_against_requests_seen(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("PRIVBENCH_CACHE", str(cache_dir))
    cfg = config.resolve("test", {"attack.reference_recovery.requests": 16, "attack.reference_recovery.curve": (4, 8),
                                  "attack.reference_recovery.trials": 400}, defense="mixup")
    task = create_task("mni-tissue", cfg=cfg)
    mixup = MixupPrivacy()
    mixup.attach(task, cfg)
    result = execute(rr.ReferenceRecovery(), mixup, task, cfg, run_dir=tmp_path, secret=0)  # fixed keys
    rows = [row for row in result.table if row["guess"].startswith("recovered")]
    assert [row["requests"] for row in rows] == [4, 8, 16]
    assert result.settings["requests"] == 16 and result.settings["reference_pool"] == len(task.scans("reference"))
    used = result.settings["references_used"] / result.settings["reference_pool"]
    assert 0 <= result.metrics["references_recovered"] <= used  # an unused reference cannot be recovered
    assert result.metrics["msssim"] > result.metrics["template_msssim"]
    assert result.metrics["references_recovered"] > 0 and result.metrics["msssim"] > 0.9
    assert (tmp_path / "reference-recovery_scores.csv").exists() and (tmp_path / "reference-recovery_roc.png").exists()
    bad = config.resolve("test", defense="mixup")
    with pytest.raises(Exception, match="curve"):
        config.resolve("test", {"attack.reference_recovery.curve": (16,), "attack.reference_recovery.requests": 16})
    assert bad.attack.reference_recovery.requests == 12
