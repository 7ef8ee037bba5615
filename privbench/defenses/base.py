"""The client-server protocol every defense implements (DESIGN.md), and the base of the
defenses whose networks are trained (:class:`TrainedDefense`).

Tensors: images ``[B,1,D,H,W]`` float32 in [0, 1]; labels ``[B,D,H,W]`` int64; predictions
``[B,C,D,H,W]`` class probabilities (C includes background). The server never receives a key.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privbench import collapse, engine, streams
from privbench.config import RunConfig
from privbench.engine import TrainReport
from privbench.errors import PrivbenchError
from privbench.evaluation import Evaluation, Study, evaluate_default
from privbench.metrics import dice
from privbench.tasks.base import Task

Key = Any  # a defense's client-side secret; None where there is none


class WhiteBox(abc.ABC):
    """A trained client-side encoding as the server holds it (the white-box threat model: the
    server trained it together with its own network). A copy of the weights, applied with keys
    its holder draws; it holds nothing of the victims: no key, reference, task or run seed."""

    deterministic: bool = False  # one image always gives one proxy (the encoding has no key)

    @abc.abstractmethod
    def encode(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Proxies ``[B,1,D,H,W]`` of whole volumes, each with a fresh key drawn from ``generator``."""


class Defense(abc.ABC):
    """A way for a client to get a segmentation from an untrusted server."""

    name: str = ""
    encodes: bool = True  # it promises requests that are not the scans (privbench.collapse checks)

    @abc.abstractmethod
    def fit(self, task: Task, cfg: RunConfig, *, device: torch.device, progress: bool = True,
            workdir: Path | None = None) -> TrainReport:
        """Train every network of the defense end to end (resuming from ``workdir`` if it holds a
        checkpoint)."""

    def restore(self, run_dir: Path, task: Task, cfg: RunConfig, *, device: torch.device) -> None:
        """Load what :meth:`fit` trained in ``run_dir``, training and writing nothing (a defense
        with nothing trained has nothing to load)."""

    def check(self, task: Task, cfg: RunConfig) -> None:
        """Raise :class:`~privbench.errors.PrivbenchError` if the defense cannot run on ``task``
        with ``cfg``; the runner calls it before the run folder exists."""

    def new_key(self, generator: torch.Generator | None = None) -> Key:
        """Draw the client's secret for one request."""
        return None

    def white_box(self) -> WhiteBox | None:
        """The trained encoding as the server holds it, for white-box threat models (None where
        the server holds no weights the client encodes with)."""
        return None

    def identity_embedder(self) -> torch.nn.Module | None:
        """A copy of the identity discriminator the defense was trained against, as an embedder
        of whole volumes ``[1,1,D,H,W] -> [1,E]`` (the server trained it; None where there is none)."""
        return None

    @abc.abstractmethod
    def encode(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        """Client: what leaves the hospital for ``image``."""

    def encoding_measures(self, image: torch.Tensor, key: Key) -> dict[str, float]:
        """Hook: how much the encoding of ``image`` ``[1,1,D,H,W]`` with ``key`` changes it, in the
        defense's own terms (deformation: its displacement in mm), beside the request-to-scan
        MS-SSIM that :mod:`privbench.collapse` measures for every defense."""
        return {}

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

    def study(self, task: Task, cfg: RunConfig, attacks: list[Any], *, run_dir: Path,
              progress: bool = True, secret: int | None = None) -> Study | None:
        """Hook: a study of the defense's own after the attacks (mixup: the a-curve), or None;
        attacks it runs draw their victims' keys from the client ``secret``."""
        return None


def accelerate(state: dict[str, Any], channels_last: bool, compile: bool) -> None:
    """Every network of ``state`` with its weights in channels-last 3D memory format and/or its
    forward compiled by ``torch.compile`` (in place: parameter names, hence checkpoints, stay
    the same; the optimisers keep their parameters)."""
    for obj in state.values():
        if isinstance(obj, torch.nn.Module):
            if channels_last:
                obj.to(memory_format=torch.channels_last_3d)
            if compile:
                obj.compile()


class TrainedDefense(Defense):
    """A defense whose networks are trained end to end, in the style of nnU-Net's trainer: the
    base owns setting up, the loop through :func:`privbench.engine.train`, checkpoints,
    restoring from a run folder and the server's sliding window over ``self.net``. A defense
    supplies :meth:`build` (its networks, optimisers and training step), encode and decode,
    and where it needs them the hooks :meth:`prepare` (client-side state from the task) and
    :meth:`sampler` (its training batches)."""

    state: dict[str, Any]  # everything a checkpoint holds: networks and optimisers by name
    net: torch.nn.Module  # the server's network

    def fit(self, task: Task, cfg: RunConfig, *, device: torch.device, progress: bool = True,
            workdir: Path | None = None) -> TrainReport:
        step = self.setup(task, cfg, device)
        return engine.train(step, self.sampler(task, cfg), cfg.train, state=self.state, device=device,
                            workdir=workdir, progress=progress, name=self.name,
                            validate=self.validator(task, cfg))

    def validator(self, task: Task, cfg: RunConfig) -> engine.Validate | None:
        """Scores of the defense's segmentation now (one request per scan, keys from the run's
        ``validation`` stream, so training draws nothing from it) on the first scan of each
        validation subject: ``val_dice`` (mean over classes) and ``val_dice_<class>``, and how
        much the encoding changes those scans (``val_request_msssim`` and the defense's own
        :meth:`encoding_measures`, :mod:`privbench.collapse`). None when the task has no
        validation scans or validation is off."""
        first: dict[str, Any] = {}
        for scan in task.scans("validation"):
            first.setdefault(scan.subject, scan)
        if not first or not cfg.train.validate_every:
            return None
        volumes = [task.load(scan) for scan in first.values()]
        classes = task.class_names[1:]

        def validate() -> dict[str, float]:
            generator = streams.generator(cfg.seed, "validation")
            scores = torch.stack([dice(self.segment(image[None], generator=generator).argmax(1), label[None],
                                       task.num_classes)[0] for image, label in volumes]).numpy()
            encoding = collapse.measure(self, [image for image, _ in volumes],
                                        streams.generator(cfg.seed, "validation", "encoding"))
            measured = {f"val_{name}": value for name, value in encoding.items()
                        if name not in ("request_msssim_max", "scans")}
            means = {c: float(np.nanmean(scores[:, i])) for i, c in enumerate(classes)
                     if np.isfinite(scores[:, i]).any()}
            if not means:
                return measured
            return {"val_dice": float(np.mean(list(means.values()))), **{f"val_dice_{c}": v for c, v in means.items()},
                    **measured}

        return validate

    def restore(self, run_dir: Path, task: Task, cfg: RunConfig, *, device: torch.device) -> None:
        self.setup(task, cfg, device)
        path = Path(run_dir) / engine.CHECKPOINT
        iteration = engine.read_checkpoint(path)["iteration"]
        if iteration != cfg.train.iterations:
            raise PrivbenchError(f"{path} holds iteration {iteration}, not the final {cfg.train.iterations}: "
                                 "the run did not finish")
        engine.load_checkpoint(Path(run_dir), self.state)

    def setup(self, task: Task, cfg: RunConfig, device: torch.device) -> engine.Step:
        """Everything but training: the client's state, the networks and optimisers; returns
        one training step."""
        self.prepare(task, cfg)
        self.configure(task.num_classes, task.spacing, cfg, device)
        step = self.build(cfg)
        accelerate(self.state, cfg.train.channels_last, cfg.train.compile)
        return step

    def configure(self, num_classes: int, spacing: float, cfg: RunConfig, device: torch.device) -> None:
        """The settings :meth:`build` and the server read (set without a task by the benchmarks)."""
        self.device, self.num_classes, self.spacing, self.seed = device, num_classes, spacing, cfg.seed
        self.patch_size, self.eval_cfg, self.amp = cfg.train.patch_size, cfg.eval, cfg.train.amp

    def prepare(self, task: Task, cfg: RunConfig) -> None:
        """Hook: client-side state taken from the task (mixup: its reference pool)."""

    @abc.abstractmethod
    def build(self, cfg: RunConfig) -> engine.Step:
        """Create the networks (``self.net`` is the server's) and optimisers, put all of them in
        ``self.state``, and return one training step (the benchmarks time it)."""

    def sampler(self, task: Task, cfg: RunConfig) -> engine.Sampler:
        """Hook: the training batches (default: random patches of the training scans)."""
        return engine.PatchSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed,
                                   foreground=cfg.train.foreground_fraction)

    def server(self, proxy: torch.Tensor) -> torch.Tensor:
        """The server network's class probabilities for the proxy, window by window."""
        self.net.eval()
        return engine.sliding_window_predict(self.net, proxy, self.patch_size, self.eval_cfg,
                                             self.device, self.amp).cpu()
