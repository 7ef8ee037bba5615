"""``none``: the no-proxy baseline, where the server segments the scan itself.

It bounds utility from above and privacy from below: every other defense is measured
against it. The key is None; encode and decode are identities.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from privbench import engine
from privbench.config import RunConfig
from privbench.defenses.base import Key, TrainedDefense
from privbench.nets import SegmentationNet
from privbench.registry import register_defense


@register_defense("none", description="No proxy: the server segments the raw scan (baseline)",
                  paper="Kim et al., IPMI 2023 (Baseline row)", requires=(),
                  published={"reid_f1": 0.988, "reid_map": 0.998, "dice_mean": 0.896})
class NoProxy(TrainedDefense):
    """The server's U-Net++ trained directly on the scans with Dice + cross-entropy."""

    name = "none"
    encodes = False  # the scan itself is the request

    def build(self, cfg: RunConfig) -> engine.Step:
        self.net = SegmentationNet(1, self.num_classes, cfg.train.features).to(self.device)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.train.lr)
        self.state = {"net": self.net, "optimizer": optimizer}
        # Dice over the whole batch: small classes absent from one patch do not add noise
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            self.net.train()
            engine.set_learning_rate(optimizer, engine.learning_rate(cfg.train, iteration))
            optimizer.zero_grad(set_to_none=True)
            with engine.autocast(self.device, self.amp):
                logits = self.net(batch.image)
            loss = loss_fn(logits.float(), batch.label[:, None])
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        return step

    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        return image

    def decode(self, server_output: torch.Tensor, key: Key) -> torch.Tensor:
        return server_output
