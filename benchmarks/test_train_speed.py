"""Speed of one training iteration of the no-proxy baseline at the quick preset's settings.

Run with ``pytest benchmarks/`` (not part of the test suite). Later defenses compare their
iteration against this one at the same patch and batch size.
"""

import torch

from privbench import config, engine
from privbench.defenses.none import NoProxy


def test_none_training_iteration(benchmark):
    cfg = config.resolve("quick")
    torch.manual_seed(0)
    step = NoProxy().build(num_classes=4, cfg=cfg, device=torch.device("cpu"))
    p, b = cfg.train.patch_size, cfg.train.batch_size
    batch = engine.Batch(torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, p, p, p)), ["s"] * b)
    losses = benchmark.pedantic(step, args=(batch, 0), rounds=5, warmup_rounds=1)
    assert torch.isfinite(torch.tensor(losses["loss"]))
