"""Speed of one training iteration of the no-proxy baseline at the quick preset's settings.

Run with ``pytest benchmarks/`` (not part of the test suite). Later defenses compare their
iteration against this one at the same patch and batch size.
"""

import torch
from monai.losses import DiceCELoss

from privbench import config
from privbench.nets import SegmentationNet


def test_none_training_iteration(benchmark):
    cfg = config.resolve("quick")
    torch.manual_seed(0)
    net = SegmentationNet(1, 4, cfg.train.features)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    p, b = cfg.train.patch_size, cfg.train.batch_size
    image, label = torch.rand(b, 1, p, p, p), torch.randint(0, 4, (b, 1, p, p, p))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        optimizer.step()
        return loss.item()

    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert loss == loss  # finite, not NaN
