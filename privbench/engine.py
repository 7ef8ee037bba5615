"""Training and inference machinery shared by every defense.

- :class:`PatchSampler` draws random cubic patches; batch ``i`` depends only on the seed and
  ``i``, so a resumed run sees exactly the batches an uninterrupted one would.
- :func:`train` runs any defense's update ``step`` for the configured iterations with a rich
  progress bar, a log line every few percent, and a checkpoint every ``checkpoint_every``
  iterations; if the work folder already holds a checkpoint, training resumes from it.
- :func:`sliding_window_predict` turns a patch network into full-volume class probabilities
  with MONAI's sliding-window inference (bfloat16 autocast where :mod:`privbench.precision`
  allows it: CUDA, or a CPU whose native bfloat16 passed its self-test).
- Training stops at the first non-finite loss, weight or gradient (:class:`NonFiniteError`),
  keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from privbench import finite, io, precision
from privbench.config import EvalConfig, TrainConfig
from privbench.errors import NonFiniteError, PrivbenchError
from privbench.tasks.base import Task

log = logging.getLogger("privbench")
CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrivbenchError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` asks torch for deterministic kernels
    (runs on CPU are then repeatable bit for bit; on CUDA it would cost speed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where :func:`privbench.precision.choose` allows it (CUDA, or a CPU whose
    native bfloat16 passed its self-test) and ``enabled`` (``train.amp``); otherwise a no-op."""
    return precision.autocast(precision.choose(device, enabled), device)


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate at ``iteration``: constant, or nnU-Net's poly decay to 0.

    A pure function of the iteration, so a resumed run follows the same schedule.
    """
    if cfg.lr_schedule == "poly":
        return cfg.lr * (1 - iteration / max(cfg.iterations, 1)) ** 0.9
    return cfg.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Batch:
    """A training batch: images ``[B,1,p,p,p]``, labels ``[B,p,p,p]`` and their subjects; with
    ``references``, a second scan's patch at the same position (``ref_image``, ``ref_label``)."""

    image: torch.Tensor
    label: torch.Tensor
    subjects: list[str]
    ref_image: torch.Tensor | None = None
    ref_label: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(self.image.to(device), self.label.to(device), self.subjects,
                     move(self.ref_image), move(self.ref_label))


class PatchSampler:
    """Random scans and patch positions from one role of a task.

    Positions are uniform, except that a ``foreground`` share of the patches (nnU-Net's
    oversampling, for small structures such as tumors) is centred on a voxel of a random
    foreground class present in the scan. With ``references=True`` each patch comes with the
    co-located patch of another scan of the same role (of another subject when there is one):
    the pairs Mixup-Privacy mixes, since the volumes are aligned and the client mixes whole
    volumes.
    """

    def __init__(self, task: Task, patch_size: int, batch_size: int, seed: int, role: str = "train",
                 references: bool = False, foreground: float = 0.0):
        self.scans = task.scans(role)
        if not self.scans:
            raise PrivbenchError(f"task {task.name!r} has no {role} scans")
        self.volumes = [task.arrays(scan) for scan in self.scans]  # memory-mapped, not copied
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed
        self.references = references
        self.picker = ForegroundPicker([label for _, label in self.volumes], patch_size, foreground)

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        partners = np.random.default_rng([self.seed, iteration, 1])  # targets stay the baseline's
        images, labels, subjects, ref_images, ref_labels = [], [], [], [], []
        for index in rng.integers(len(self.volumes), size=self.batch_size):
            image, label = self.volumes[index]
            start = self.picker.corner(int(index), rng)
            images.append(crop_patch(image, start, self.patch_size)[None])
            labels.append(crop_patch(label, start, self.patch_size, torch.int64))
            subjects.append(self.scans[index].subject)
            if self.references:
                ref_image, ref_label = self.volumes[self._partner(int(index), partners)]
                ref_images.append(crop_patch(ref_image, start, self.patch_size)[None])
                ref_labels.append(crop_patch(ref_label, start, self.patch_size, torch.int64))
        if not self.references:
            return Batch(torch.stack(images), torch.stack(labels), subjects)
        return Batch(torch.stack(images), torch.stack(labels), subjects,
                     torch.stack(ref_images), torch.stack(ref_labels))

    def _partner(self, index: int, rng: np.random.Generator) -> int:
        """A random scan of another subject (any other scan if every scan is this subject's)."""
        subject = self.scans[index].subject
        others = [i for i, scan in enumerate(self.scans) if scan.subject != subject]
        others = others or [i for i in range(len(self.scans)) if i != index] or [index]
        return others[int(rng.integers(len(others)))]


class ForegroundPicker:
    """Patch corners in label volumes: uniform, except that a ``share`` of them lies around a
    foreground voxel (a random foreground class present in the volume, a random voxel of it at
    the patch's centre, moved inward where the patch would leave the volume). Each volume's
    voxel lists are found once, on first use; with ``share`` 0 no extra random number is drawn."""

    def __init__(self, labels: list[np.ndarray], patch_size: int, share: float = 0.0):
        self.labels, self.patch_size, self.share = labels, patch_size, share
        self._voxels: dict[int, list[np.ndarray]] = {}

    def corner(self, index: int, rng: np.random.Generator) -> list[int]:
        """A patch corner in volume ``index``: around the foreground with probability ``share``."""
        if self.share and rng.random() < self.share:
            return self.start(index, rng)
        return random_start(rng, self.labels[index].shape, self.patch_size)

    def start(self, index: int, rng: np.random.Generator) -> list[int]:
        """The corner of a patch of volume ``index`` (uniform if it holds only background)."""
        shape, p = self.labels[index].shape, self.patch_size
        if index not in self._voxels:
            label = np.asarray(self.labels[index])
            self._voxels[index] = [np.argwhere(label == c) for c in np.unique(label) if c > 0]
        classes = self._voxels[index]
        if not classes:
            return random_start(rng, shape, p)
        voxels = classes[int(rng.integers(len(classes)))]
        centre = voxels[int(rng.integers(len(voxels)))]
        return [min(max(int(c) - p // 2, 0), max(n - p, 0)) for c, n in zip(centre, shape)]


def random_start(rng: np.random.Generator, shape: tuple[int, ...], p: int) -> list[int]:
    """A uniformly random corner of a ``p``-cube inside ``shape`` (0 where a side is shorter)."""
    return [int(rng.integers(0, max(n - p, 0) + 1)) for n in shape]


def crop_patch(volume: np.ndarray, start: list[int], p: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``p``-cube of ``volume`` from ``start``, as a tensor, zero-padded where it reaches
    outside the volume (a negative ``start``, or a volume smaller than a patch)."""
    inside = [slice(max(s, 0), min(s + p, n)) for s, n in zip(start, volume.shape)]
    t = torch.tensor(volume[tuple(inside)], dtype=dtype)
    pad = [x for s, cut in zip(reversed(start), reversed(inside)) for x in (cut.start - s, s + p - cut.stop)]
    return torch.nn.functional.pad(t, pad) if any(pad) else t


@dataclass
class TrainReport:
    """What training did in this process (a resumed run counts only its own iterations)."""

    iterations: int
    start_iteration: int
    seconds: float
    last_losses: dict[str, float]

    @property
    def it_per_s(self) -> float:
        done = self.iterations - self.start_iteration
        return done / self.seconds if self.seconds > 0 else 0.0


Step = Callable[[Any, int], dict[str, float]]  # (a sampler's batch, iteration) -> losses


class Sampler(Protocol):
    """What :func:`train` draws from: batch ``i`` (with ``.to(device)``) as a pure function of
    ``i``, e.g. :class:`PatchSampler` or :class:`privbench.identity.PairSampler`."""

    def batch(self, iteration: int) -> Any: ...


def train(step: Step, sampler: Sampler, cfg: TrainConfig, *, state: dict[str, Any],
          device: torch.device, workdir: Path | None = None, progress: bool = True,
          name: str = "train", checkpoint: str = CHECKPOINT) -> TrainReport:
    """Call ``step(batch, iteration)`` for iterations ``[start, cfg.iterations)``.

    ``state`` maps names to modules and optimizers (anything with ``state_dict``): they are
    saved to ``workdir/<checkpoint>`` every ``cfg.checkpoint_every`` iterations and at the end,
    and restored from it first when it exists (a finished checkpoint is only read: restoring
    writes nothing). ``step`` does the update and returns its losses. A non-finite loss, or
    non-finite weights before a save, stop training with :class:`NonFiniteError`; the last
    checkpoint written, which was checked, stays as it is.
    """
    start = load_checkpoint(workdir, state, checkpoint) if workdir else 0
    if start:
        log.info("resuming %s from iteration %d", name, start)
    losses: dict[str, float] = {}

    def check(done: int, weights: bool = False) -> None:
        """Stop at a non-finite loss (every iteration) or weight (before each save)."""
        bad = [f"loss {k} = {v}" for k, v in losses.items() if not math.isfinite(v)]
        if bad or weights:
            bad += non_finite_parts(state)
        if bad:
            raise NonFiniteError(_stopped(name, done, bad, precision.choose(device, cfg.amp), workdir, checkpoint))

    every = max(1, cfg.iterations // 20)
    began = time.perf_counter()
    with _progress_bar(progress) as bar:
        task = bar.add_task(name, total=cfg.iterations, completed=start, info="")
        for iteration in range(start, cfg.iterations):
            losses = step(sampler.batch(iteration).to(device), iteration)
            done = iteration + 1
            check(done)
            rate = (done - start) / (time.perf_counter() - began)
            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            bar.update(task, completed=done, info=f"{text} | {rate:.2f} it/s")
            if done % every == 0 or done == cfg.iterations:
                log.info("%s iter %d/%d %s %.2f it/s", name, done, cfg.iterations, text, rate)
            if workdir and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                check(done, weights=True)
                save_checkpoint(workdir, state, done, checkpoint)
    if start < cfg.iterations:
        check(cfg.iterations, weights=True)
        if workdir:
            save_checkpoint(workdir, state, cfg.iterations, checkpoint)
    return TrainReport(cfg.iterations, start, time.perf_counter() - began, losses)


def non_finite_parts(state: dict[str, Any]) -> list[str]:
    """The networks of ``state`` holding a NaN or infinite weight or gradient, e.g.
    ``["weights of net", "gradients of net"]``."""
    found = []
    for key, obj in state.items():
        if not isinstance(obj, torch.nn.Module):
            continue
        params = [p.detach() for p in obj.parameters()]
        grads = [p.grad.detach() for p in obj.parameters() if p.grad is not None]
        for what, tensors in (("weights", params), ("gradients", grads)):
            if tensors and not all(bool(torch.isfinite(t).all()) for t in tensors):
                found.append(f"{what} of {key}")
    return found


def _stopped(name: str, iteration: int, bad: list[str], chosen: precision.Precision,
             workdir: Path | None, checkpoint: str) -> str:
    """The one line a non-finite stop prints: iteration, what went non-finite, precision, and
    the checkpoint that is kept."""
    kept = "no checkpoint was written"
    if workdir and (workdir / checkpoint).exists():
        kept = f"the last good checkpoint (iteration {checkpoint_iteration(workdir, checkpoint)}) is kept in {workdir}"
    hint = "try --set train.amp=false" if chosen.autocast else "try a lower train.lr"
    return (f"{name} training stopped at iteration {iteration}: non-finite {', '.join(bad)} "
            f"(precision {chosen.dtype}); {kept}; no card was written; {hint}")


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        yield bar


def save_checkpoint(workdir: Path, state: dict[str, Any], iteration: int, name: str = CHECKPOINT) -> None:
    """Write the checkpoint atomically (a crash mid-write keeps the previous one). It is saved
    through a file object, so the archive's inner names do not depend on the file's name."""
    payload = {"iteration": iteration, "state": {k: v.state_dict() for k, v in state.items()}}
    with io.atomic_path(workdir / name) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload (``iteration`` and ``state``), loaded with ``weights_only=True``.

    A missing, damaged or truncated file, one holding objects other than tensors and numbers
    (a pickle that could run code: refused, never loaded), or a foreign one, raise
    :class:`PrivbenchError` saying which."""
    if not path.is_file():
        raise PrivbenchError(f"{path}: no checkpoint there")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PrivbenchError(f"{path}: refused, it holds objects other than tensors and numbers "
                             f"(loading it could run code); privbench never loads such a file") from exc
    except Exception as exc:  # noqa: BLE001  (zip, I/O and format errors of a damaged file)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrivbenchError(f"{path}: damaged or truncated checkpoint ({reason})") from exc
    if not (isinstance(payload, dict) and isinstance(payload.get("iteration"), int)
            and isinstance(payload.get("state"), dict)):
        raise PrivbenchError(f"{path}: not a privbench checkpoint")
    return payload


def checkpoint_iteration(workdir: Path, name: str = CHECKPOINT) -> int:
    """The iteration a checkpoint in ``workdir`` was saved at (0 if there is none or it is unreadable)."""
    try:
        return read_checkpoint(workdir / name)["iteration"]
    except PrivbenchError:
        return 0


def load_checkpoint(workdir: Path, state: dict[str, Any], name: str = CHECKPOINT) -> int:
    """Restore ``state`` from ``workdir/<name>``; return its iteration (0 if there is none).
    A checkpoint that cannot be read or does not fit ``state`` is the user's to remove."""
    path = workdir / name
    if not path.exists():
        return 0
    payload = read_checkpoint(path)
    try:
        for key, obj in state.items():
            obj.load_state_dict(payload["state"][key])
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrivbenchError(f"{path}: does not fit this run's networks ({reason})") from exc
    return payload["iteration"]


@torch.no_grad()
def sliding_window_predict(net: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                           patch_size: int, cfg: EvalConfig, device: torch.device,
                           amp: bool = True, softmax: bool = True) -> torch.Tensor:
    """Softmax probabilities ``[B,C,D,H,W]`` of ``net`` over whole volumes ``[B,Cin,D,H,W]``
    (with ``softmax=False``, the blended outputs themselves, e.g. of an image-to-image net).

    The B volumes share every window: they are folded into channels for MONAI's sliding
    window, so each network call holds the same window of all B volumes (reference TTA sends
    its K mixtures through the server this way, one batched pass per window).
    """
    b, cin = volume.shape[:2]

    def all_volumes(windows: torch.Tensor) -> torch.Tensor:  # [n, B*Cin, p,p,p] -> [n, B*C, p,p,p]
        n = windows.shape[0]
        out = net(windows.reshape(n * b, cin, *windows.shape[2:]))
        return out.reshape(n, -1, *out.shape[2:])

    folded = volume.reshape(1, b * cin, *volume.shape[2:]).to(device)
    windows_per_call = max(1, cfg.sw_batch_size // b)
    with autocast(device, amp):
        logits = sliding_window_inference(folded, (patch_size,) * 3, windows_per_call, all_volumes,
                                          overlap=cfg.sw_overlap, mode="gaussian")
    outputs = logits.reshape(b, -1, *logits.shape[2:]).float()
    finite.require_tensor(outputs, f"a network's output over whole volumes "
                                   f"(precision {precision.choose(device, amp).dtype})")
    return torch.softmax(outputs, dim=1) if softmax else outputs
