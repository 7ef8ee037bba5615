"""The memory estimate is a lower bound, so a refused run could never have fitted."""

import pytest
import torch

from privbench import config, resources
from privbench.errors import PrivbenchError
from privbench.nets import SegmentationNet


@pytest.mark.parametrize("overrides", [
    {},
    {"train.batch_size": 3, "train.patch_size": 48},
    {"train.features": (4, 4, 8, 8, 16, 4)},
])
def test_the_estimate_is_below_what_backpropagation_keeps(overrides):
    cfg = config.resolve("test", overrides)
    net = SegmentationNet(1, 4, cfg.train.features)
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    p, b = cfg.train.patch_size, cfg.train.batch_size
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.rand(b, 1, p, p, p))
    batch = b * p ** 3 * (4 + 8)
    assert batch < resources.training_bytes(cfg) <= batch + sum(kept)


def test_what_cannot_fit_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(resources, "available_bytes", lambda device: 8 * 2**30)
    cpu = torch.device("cpu")
    resources.check_fits(config.resolve("quick"), cpu)
    resources.check_fits(config.resolve("paper"), cpu)
    with pytest.raises(PrivbenchError, match=r"train.patch_size=1024 needs at least .* TiB .* 8.0 GiB free"):
        resources.check_fits(config.resolve("quick", {"train.patch_size": 1024}), cpu)
    assert resources.available_bytes(cpu) > 0
