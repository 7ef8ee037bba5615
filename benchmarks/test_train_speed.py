"""Speed of one training iteration at the quick preset's settings, per defense.

Run with ``pytest benchmarks/`` (not part of the test suite). Every defense's iteration is
compared with the no-proxy baseline's at the same patch and batch size: Mixup-Privacy's goal
is at most 1.15x. Privacy-Net and Deformation-Proxy also encode the second patch of every pair
and update a discriminator (no goal set; their ratio is reported). The group table prints them
all; since a shared machine drifts between two
sequential measurements, ``test_mixup_over_none_ratio`` also alternates the two steps and
reports the ratio of their medians (``extra_info``, shown with ``--benchmark-verbose`` or in
``--benchmark-json``).
"""

import statistics
import time

import pytest
import torch

from privbench import config, engine
from privbench.defenses.deformation import DeformationProxy
from privbench.defenses.mixup import MixupPrivacy
from privbench.defenses.none import NoProxy
from privbench.defenses.privacy_net import PrivacyNet
from privbench.identity import PairBatch

DEFENSES = {"none": NoProxy, "mixup": MixupPrivacy, "privacy-net": PrivacyNet, "deformation": DeformationProxy}
QUICK_SPACING = 2.0  # mm


def _step_and_batch(name):
    cfg = config.resolve("quick", defense=name)
    torch.manual_seed(0)
    defense, device, p, b = DEFENSES[name](), torch.device("cpu"), cfg.train.patch_size, cfg.train.batch_size
    defense.configure(4, QUICK_SPACING, cfg, device)
    step = defense.build(cfg)
    if name in ("none", "mixup"):
        volumes = [torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p))]
        return step, engine.Batch(*volumes, ["s"] * b, torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p)))
    size = p + 2 * defense.margin()
    sides = [torch.rand(b, 1, size, size, size) for _ in range(2)]
    labels = [torch.randint(0, 4, (b, size, size, size)) for _ in range(2)]
    return step, PairBatch(*sides, torch.tensor([1.0, 0.0] * (b // 2)), *labels)


@pytest.mark.parametrize("name", list(DEFENSES))
def test_training_iteration(benchmark, name):
    benchmark.group = "training iteration (quick preset)"
    step, batch = _step_and_batch(name)
    losses = benchmark.pedantic(step, args=(batch, 0), rounds=10, warmup_rounds=2)
    assert torch.isfinite(torch.tensor(losses["loss"]))


def test_defenses_over_none_ratio(benchmark):
    steps = {name: _step_and_batch(name) for name in DEFENSES}
    seconds = {name: [] for name in DEFENSES}

    def all_steps():
        for name, (step, batch) in steps.items():
            began = time.perf_counter()
            step(batch, 0)
            seconds[name].append(time.perf_counter() - began)

    benchmark.pedantic(all_steps, rounds=12, warmup_rounds=2)
    baseline = statistics.median(seconds["none"][2:])
    for name in DEFENSES:
        if name != "none":
            ratio = statistics.median(seconds[name][2:]) / baseline
            benchmark.extra_info[f"{name}_over_none"] = round(ratio, 3)
            assert ratio > 0
