"""Speed of one training iteration at the quick preset's settings, per defense.

Run with ``pytest benchmarks/`` (not part of the test suite). Every defense's iteration is
compared with the no-proxy baseline's at the same patch and batch size: Mixup-Privacy's goal
is at most 1.15x. The group table prints both; since a shared machine drifts between two
sequential measurements, ``test_mixup_over_none_ratio`` also alternates the two steps and
reports the ratio of their medians (``extra_info``, shown with ``--benchmark-verbose`` or in
``--benchmark-json``).
"""

import statistics
import time

import pytest
import torch

from privbench import config, engine
from privbench.defenses.mixup import MixupPrivacy
from privbench.defenses.none import NoProxy

DEFENSES = {"none": NoProxy, "mixup": MixupPrivacy}


def _step_and_batch(name):
    cfg = config.resolve("quick", defense=name)
    torch.manual_seed(0)
    step = DEFENSES[name]().build(num_classes=4, cfg=cfg, device=torch.device("cpu"))
    p, b = cfg.train.patch_size, cfg.train.batch_size
    volumes = [torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p))]
    batch = engine.Batch(*volumes, ["s"] * b, torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p)))
    return step, batch


@pytest.mark.parametrize("name", list(DEFENSES))
def test_training_iteration(benchmark, name):
    benchmark.group = "training iteration (quick preset)"
    step, batch = _step_and_batch(name)
    losses = benchmark.pedantic(step, args=(batch, 0), rounds=10, warmup_rounds=2)
    assert torch.isfinite(torch.tensor(losses["loss"]))


def test_mixup_over_none_ratio(benchmark):
    steps = {name: _step_and_batch(name) for name in DEFENSES}
    seconds = {name: [] for name in DEFENSES}

    def both():
        for name, (step, batch) in steps.items():
            began = time.perf_counter()
            step(batch, 0)
            seconds[name].append(time.perf_counter() - began)

    benchmark.pedantic(both, rounds=12, warmup_rounds=2)
    ratio = statistics.median(seconds["mixup"][2:]) / statistics.median(seconds["none"][2:])
    benchmark.extra_info["mixup_over_none"] = round(ratio, 3)
    assert ratio > 0
