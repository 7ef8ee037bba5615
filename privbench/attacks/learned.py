"""What attackers that train a network share: patch samplers drawn from their public scans,
and the fit loop (through :func:`privbench.engine.train`, so it checkpoints and resumes like a
defense's training)."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from privbench import engine, streams
from privbench.attacks.base import Runtime
from privbench.config import TrainConfig

T = TypeVar("T")


def window(generator: torch.Generator, shape: tuple[int, ...], patch: int) -> tuple[slice, ...]:
    """A random patch window ``(:, d, h, w)`` of a volume ``[C, *shape]``."""
    start = [int(torch.randint(max(n - patch, 0) + 1, (), generator=generator)) for n in shape]
    return (slice(None), *(slice(s, s + patch) for s in start))


class AlignedPatches:
    """Batch ``i`` of co-located patches of (input, target) volume pairs, as ``image`` and
    ``label``: a pure function of the seed and ``i`` (so training resumes exactly)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, patch: int, batch: int, seed: int):
        self.inputs, self.targets, self.patch, self.size, self.seed = inputs, targets, patch, batch, seed

    def batch(self, iteration: int) -> engine.Batch:
        g = streams.generator(self.seed, "patches", str(iteration))
        which = torch.randint(len(self.targets), (self.size,), generator=g).tolist()
        windows = [window(g, tuple(self.targets.shape[2:]), self.patch) for _ in which]
        return engine.Batch(torch.stack([self.inputs[i][w] for i, w in zip(which, windows)]),
                            torch.stack([self.targets[i][w] for i, w in zip(which, windows)]), [])


Loss = Callable[[torch.Tensor, engine.Batch], torch.Tensor]


def seeded(seed: int, make: Callable[[], T]) -> T:
    """``make()``'s network (or model holding networks) with initial weights from the attacker's
    own stream, not from the global random state (which depends on whatever ran before, and
    under the harness on the run's seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(streams.seed_of(seed, "init"))
        return make()


def fit(net: torch.nn.Module, sampler, loss: Loss, *, iterations: int, batch_size: int, lr: float,
        features: tuple[int, ...], run: Runtime, name: str, checkpoint: str) -> engine.TrainReport:
    """Train ``net`` with Adam on ``loss(net(batch.image), batch)``, checkpointed in the
    attacker's work folder under ``checkpoint`` (a finished checkpoint is only read)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        with engine.autocast(run.device, run.amp):
            out = net(batch.image)
        value = loss(out.float(), batch)
        value.backward()
        optimizer.step()
        return {"loss": value.item()}

    train_cfg = TrainConfig(iterations=iterations, batch_size=batch_size, patch_size=run.patch_size, lr=lr,
                            lr_schedule="constant", features=features, checkpoint_every=run.checkpoint_every,
                            amp=run.amp)
    return engine.train(step, sampler, train_cfg, state={"net": net, "optimizer": optimizer}, device=run.device,
                        workdir=run.workdir, progress=run.progress, name=name, checkpoint=checkpoint)
