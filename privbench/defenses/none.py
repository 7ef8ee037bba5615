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
        step = self.build(task.num_classes, cfg, device)
        sampler = engine.PatchSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed,
                                      foreground=cfg.train.foreground_fraction)
        return engine.train(step, sampler, cfg.train, state=self.state, device=device,
                            workdir=workdir, progress=progress, name="none")

    def build(self, num_classes: int, cfg: RunConfig, device: torch.device) -> engine.Step:
        """Create the network and optimiser; return one training step (the benchmarks time it)."""
        self.device, self.patch_size = device, cfg.train.patch_size
        self.eval_cfg, self.amp = cfg.eval, cfg.train.amp
        self.net = SegmentationNet(1, num_classes, cfg.train.features).to(device)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.train.lr)
        self.state = {"net": self.net, "optimizer": optimizer}
        # Dice over the whole batch: small classes absent from one patch do not add noise
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

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

        return step

    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        return image

    def server(self, proxy: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return engine.sliding_window_predict(self.net, proxy, self.patch_size, self.eval_cfg,
                                             self.device, self.amp).cpu()

    def decode(self, server_output: torch.Tensor, key: Key) -> torch.Tensor:
        return server_output
