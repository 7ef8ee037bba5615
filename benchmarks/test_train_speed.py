"""Speed of one training iteration at the quick preset's settings, per defense.

Run with ``pytest benchmarks/`` (not part of the test suite). Every defense's iteration is
compared with the no-proxy baseline's at the same patch and batch size: Mixup-Privacy's goal
is at most 1.15x (``pytest benchmarks/ --benchmark-group-by=group`` prints both).
"""

import pytest
import torch

from privbench import config, engine
from privbench.defenses.mixup import MixupPrivacy
from privbench.defenses.none import NoProxy

DEFENSES = {"none": NoProxy, "mixup": MixupPrivacy}


@pytest.mark.parametrize("name", list(DEFENSES))
def test_training_iteration(benchmark, name):
    benchmark.group = "training iteration (quick preset)"
    cfg = config.resolve("quick", defense=name)
    torch.manual_seed(0)
    step = DEFENSES[name]().build(num_classes=4, cfg=cfg, device=torch.device("cpu"))
    p, b = cfg.train.patch_size, cfg.train.batch_size
    volumes = [torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p))]
    batch = engine.Batch(*volumes, ["s"] * b, torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p)))
    losses = benchmark.pedantic(step, args=(batch, 0), rounds=10, warmup_rounds=2)
    assert torch.isfinite(torch.tensor(losses["loss"]))
