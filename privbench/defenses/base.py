"""The client-server protocol every defense implements (DESIGN.md).

Tensors: images ``[B,1,D,H,W]`` float32 in [0, 1]; labels ``[B,D,H,W]`` int64; predictions
``[B,C,D,H,W]`` class probabilities (C includes background). The server never receives a key.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch

from privbench.config import RunConfig
from privbench.engine import TrainReport
from privbench.evaluation import Evaluation, evaluate_default
from privbench.tasks.base import Task

Key = Any  # a defense's client-side secret; None where there is none


class Defense(abc.ABC):
    """A way for a client to get a segmentation from an untrusted server."""

    name: str = ""

    @abc.abstractmethod
    def fit(self, task: Task, cfg: RunConfig, *, device: torch.device, progress: bool = True,
            workdir: Path | None = None) -> TrainReport:
        """Train every network of the defense end to end (resuming from ``workdir`` if it holds a
        checkpoint)."""

    def check(self, task: Task, cfg: RunConfig) -> None:
        """Raise :class:`~privbench.errors.PrivbenchError` if the defense cannot run on ``task``
        with ``cfg``; the runner calls it before the run folder exists."""

    def new_key(self, generator: torch.Generator | None = None) -> Key:
        """Draw the client's secret for one request."""
        return None

    @abc.abstractmethod
    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        """Client: what leaves the hospital for ``image``."""

    @abc.abstractmethod
    def server(self, proxy: torch.Tensor) -> torch.Tensor:
        """Server: its prediction for the proxy, over the whole volume."""

    @abc.abstractmethod
    def decode(self, server_output: torch.Tensor, key: Key) -> torch.Tensor:
        """Client: class probabilities for the original image."""

    def segment(self, image: torch.Tensor, *, tta: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """encode -> server -> decode, with ``tta`` fresh keys, probabilities averaged."""
        total = None
        for _ in range(tta):
            key = self.new_key(generator)
            probs = self.decode(self.server(self.encode(image, key)), key)
            total = probs if total is None else total + probs
        return total / tta

    def evaluate(self, task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
        """Utility on the test scans for the card (one request per scan; defenses with
        several variants, like mixup, override this)."""
        return evaluate_default(self, task, cfg, run_dir=run_dir)
