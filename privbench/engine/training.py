"""The training loop every defense and attack shares, with its checkpoints.

:func:`train` runs an update ``step`` for the configured iterations with a rich progress bar,
a log line every few percent, and a checkpoint every ``checkpoint_every`` iterations; if the
work folder already holds a checkpoint, training resumes from it. Training stops at the first
non-finite loss, weight or gradient (:class:`NonFiniteError`), keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from privbench import io, precision
from privbench.engine import distributed
from privbench.engine.sampling import batches
from privbench.config import TrainConfig
from privbench.errors import NonFiniteError, PrivbenchError

log = logging.getLogger("privbench")
CHECKPOINT = "checkpoint.pt"


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate at ``iteration``: constant, or nnU-Net's poly decay to 0.

    A pure function of the iteration, so a resumed run follows the same schedule. Past the
    schedule's end (``privbench bench`` times steps beyond a short preset's) the poly rate stays
    at 0, never the complex number a negative base to the power 0.9 would give.
    """
    if cfg.lr_schedule == "poly":
        return cfg.lr * max(0.0, 1 - iteration / max(cfg.iterations, 1)) ** 0.9
    return cfg.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class TrainReport:
    """What training did: ``seconds`` and the rate in this process (a resumed run counts only
    its own iterations), ``earlier_seconds`` in the processes before it (None where that was not
    recorded, e.g. a checkpoint written by older code)."""

    iterations: int
    start_iteration: int
    seconds: float
    last_losses: dict[str, float]
    earlier_seconds: float | None = 0.0

    @property
    def it_per_s(self) -> float | None:
        """Iterations per second in this process; None if it trained none."""
        done = self.iterations - self.start_iteration
        return done / self.seconds if done > 0 and self.seconds > 0 else None

    @property
    def total_seconds(self) -> float | None:
        """Training time over every process that trained this checkpoint (None if unknown)."""
        return None if self.earlier_seconds is None else self.earlier_seconds + self.seconds


Step = Callable[[Any, int], dict[str, float]]  # (a sampler's batch, iteration) -> losses


class Sampler(Protocol):
    """What :func:`train` draws from: batch ``i`` (with ``.to(device)``) as a pure function of
    ``i``, e.g. :class:`~privbench.engine.sampling.PatchSampler` or :class:`privbench.identity.PairSampler`."""

    def batch(self, iteration: int) -> Any: ...


Validate = Callable[[], dict[str, float]]  # scores of the networks as they are now, e.g. {"val_dice": 0.8}


def train(step: Step, sampler: Sampler, cfg: TrainConfig, *, state: dict[str, Any],
          device: torch.device, workdir: Path | None = None, progress: bool = True,
          name: str = "train", checkpoint: str = CHECKPOINT, validate: Validate | None = None) -> TrainReport:
    """Call ``step(batch, iteration)`` for iterations ``[start, cfg.iterations)``.

    ``state`` maps names to modules and optimizers (anything with ``state_dict``): they are
    saved to ``workdir/<checkpoint>`` every ``cfg.checkpoint_every`` iterations and at the end,
    and restored from it first when it exists (a finished checkpoint is only read: restoring
    writes nothing). ``step`` does the update and returns its losses. A non-finite loss, or
    non-finite weights before a save, stop training with :class:`NonFiniteError`; the last
    checkpoint written, which was checked, stays as it is. ``workdir`` is made if missing.

    The training curve goes to ``workdir/<progress_file>`` with each checkpoint: the mean of
    each loss over every logging interval and, every ``cfg.validate_every`` iterations and at the
    end (in runs of at least that many iterations), the scores ``validate()`` returns (it runs in eval mode without gradients, and the
    modules' modes are restored, so training is the same with or without it; its seconds are
    not counted as training time).
    """
    writer = distributed.rank() == 0  # with several processes, rank 0 alone writes files and validates
    if distributed.world() > 1:
        distributed.require_divisible(cfg.batch_size)
    if workdir and writer:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    start = load_checkpoint(workdir, state, checkpoint) if workdir else 0
    if distributed.world() > 1:
        distributed.synchronise(state)
    earlier = _earlier_seconds(workdir, checkpoint, start) if start else 0.0
    if start:
        log.info("resuming %s from iteration %d", name, start)
    losses: dict[str, float] = {}
    curve = Curve(workdir / progress_file(checkpoint) if workdir and writer else None, start)
    paused = 0.0  # seconds spent validating, not training

    def save(done: int) -> None:
        save_checkpoint(workdir, state, done, checkpoint)
        spent = None if earlier is None else earlier + time.perf_counter() - began - paused
        io.write_text(workdir / seconds_file(checkpoint), json.dumps({"iteration": done, "seconds": spent}))
        curve.write()

    def validation(done: int) -> None:
        nonlocal paused
        if validate is None or not writer or not cfg.validate_every or cfg.iterations < cfg.validate_every or (
                done % cfg.validate_every and done < cfg.iterations):
            return  # a run shorter than one validation interval is not validated (e.g. a smoke test)
        clock = time.perf_counter()
        modes = {key: obj.training for key, obj in state.items() if isinstance(obj, torch.nn.Module)}
        for key in modes:
            state[key].eval()
        with torch.no_grad():
            scores = validate()
        for key, mode in modes.items():
            state[key].train(mode)
        curve.add(done, scores)
        log.info("%s iter %d validation %s", name, done, " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        paused += time.perf_counter() - clock

    def check(done: int, weights: bool = False) -> None:
        """Stop at a non-finite loss (every iteration) or weight (before each save)."""
        bad = [f"loss {k} = {v}" for k, v in losses.items() if not math.isfinite(v)]
        if bad or weights:
            bad += non_finite_parts(state)
        if bad:
            raise NonFiniteError(_stopped(name, done, bad, precision.choose(device, cfg.amp), workdir, checkpoint))

    every = max(1, cfg.iterations // 20)
    began = time.perf_counter()
    workers = loader_workers(cfg, device)
    stream = batches(sampler, start, cfg.iterations, workers, pin_memory=workers > 0 and device.type == "cuda")
    with _progress_bar(progress and writer) as bar:
        task = bar.add_task(name, total=cfg.iterations, completed=start, info="")
        for iteration, batch in zip(range(start, cfg.iterations), stream):
            losses = distributed.average(step(distributed.share_of(batch).to(device), iteration), device)
            done = iteration + 1
            check(done)
            curve.accumulate(losses)
            rate = (done - start) / (time.perf_counter() - began - paused)
            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            bar.update(task, completed=done, info=f"{text} | {rate:.2f} it/s")
            if done % every == 0 or done == cfg.iterations:
                log.info("%s iter %d/%d %s %.2f it/s", name, done, cfg.iterations, text, rate)
                curve.add(done, curve.interval_means())
            validation(done)
            if workdir and writer and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                check(done, weights=True)
                save(done)
    if start < cfg.iterations:
        check(cfg.iterations, weights=True)
        if workdir and writer:
            save(cfg.iterations)
    return TrainReport(cfg.iterations, start, time.perf_counter() - began - paused, losses, earlier)


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """``cfg.workers``, or for -1 (auto): none on CPU (on a few cores the worker processes only
    take cores from the step, measured in the README), and on CUDA up to 8 per process, leaving
    a core for the main thread."""
    if cfg.workers >= 0:
        return cfg.workers
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // distributed.world() - 1))


def progress_file(checkpoint: str = CHECKPOINT) -> str:
    """The training curve beside a checkpoint: ``progress.csv`` for a run's own checkpoint,
    ``<stem>_progress.csv`` for an attacker's."""
    return "progress.csv" if checkpoint == CHECKPOINT else f"{Path(checkpoint).stem}_progress.csv"


class Curve:
    """The rows of a training curve (``iteration`` and named values), continued on resume from
    the rows its file holds up to the resumed iteration."""

    def __init__(self, path: Path | None, start: int):
        self.path, self.rows, self.sums, self.count = path, {}, {}, 0
        if path and start and path.is_file():
            for row in csv.DictReader(path.read_text().splitlines()):
                if int(row["iteration"]) <= start:
                    self.rows[int(row["iteration"])] = {k: float(v) for k, v in row.items()
                                                        if k != "iteration" and v != ""}

    def accumulate(self, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def interval_means(self) -> dict[str, float]:
        """Each loss's mean since the last call (the logging interval), then start afresh."""
        means = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return means

    def add(self, iteration: int, values: dict[str, float]) -> None:
        self.rows.setdefault(iteration, {}).update(values)

    def write(self) -> None:
        """Write every row so far (blank where a value was not measured at that iteration)."""
        if not self.path:
            return
        columns = list(dict.fromkeys(k for row in self.rows.values() for k in row))
        lines = [",".join(["iteration", *columns])]
        lines += [",".join([str(i), *(repr(row[c]) if c in row else "" for c in columns)])
                  for i, row in sorted(self.rows.items())]
        io.write_text(self.path, "\n".join(lines) + "\n")


def seconds_file(checkpoint: str = CHECKPOINT) -> str:
    """The file beside a checkpoint that records the training seconds spent to reach it (kept
    out of the checkpoint, whose bytes stay a function of the seed)."""
    return f"{Path(checkpoint).stem}_seconds.json"


def _earlier_seconds(workdir: Path, checkpoint: str, iteration: int) -> float | None:
    """The training seconds recorded for the checkpoint at ``iteration``, or None."""
    try:
        record = json.loads((workdir / seconds_file(checkpoint)).read_text())
    except (OSError, ValueError):
        return None
    seconds = record.get("seconds") if isinstance(record, dict) and record.get("iteration") == iteration else None
    return float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else None


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
        try:
            torch.save(payload, handle)
        except RuntimeError as exc:  # torch wraps a failed write (a full disk) in its own error
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None  # the OSError: one line naming the file, not a traceback
            raise


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
