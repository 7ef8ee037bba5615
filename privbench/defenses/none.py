"""``none``: the no-proxy baseline, where the server segments the scan itself.

It bounds utility from above and privacy from below: every other defense is measured
against it. The key is None; encode and decode are identities.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.losses import DiceCELoss

from privbench import engine
from privbench.config import RunConfig
from privbench.defenses.base import Defense, Key
from privbench.nets import SegmentationNet
from privbench.registry import register_defense
from privbench.tasks.base import Task


@register_defense("none", description="No proxy: the server segments the raw scan (baseline)",
                  paper="Kim et al., IPMI 2023 (Baseline row)", requires=())
class NoProxy(Defense):
    """The server's U-Net++ trained directly on the scans with Dice + cross-entropy."""

    name = "none"

    def fit(self, task: Task, cfg: RunConfig, *, device: torch.device, progress: bool = True,
            workdir: Path | None = None) -> engine.TrainReport:
        self.device, self.patch_size = device, cfg.train.patch_size
        self.eval_cfg, self.amp = cfg.eval, cfg.train.amp
        self.net = SegmentationNet(1, task.num_classes, cfg.train.features).to(device)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.train.lr)
        # Dice over the whole batch: small classes absent from one patch do not add noise
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        sampler = engine.PatchSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed)

        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            self.net.train()
            engine.set_learning_rate(optimizer, engine.learning_rate(cfg.train, iteration))
            optimizer.zero_grad(set_to_none=True)
            with engine.autocast(device, self.amp):
                logits = self.net(batch.image)
            loss = loss_fn(logits.float(), batch.label[:, None])
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        return engine.train(step, sampler, cfg.train, state={"net": self.net, "optimizer": optimizer},
                            device=device, workdir=workdir, progress=progress, name="none")

    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        return image

    def server(self, proxy: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return engine.sliding_window_predict(self.net, proxy, self.patch_size, self.eval_cfg,
                                             self.device, self.amp).cpu()

    def decode(self, server_output: torch.Tensor, key: Key) -> torch.Tensor:
        return server_output
