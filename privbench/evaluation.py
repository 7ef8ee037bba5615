"""Utility evaluation of a trained defense on the task's test scans.

Every defense gets :func:`evaluate_default`: one request per test scan through its
client-server protocol, Dice per class and the time of each stage. A defense with a study of
its own (Mixup-Privacy's, in :mod:`privbench.defenses.mixup.study`) returns the same
:class:`Evaluation`, with its own card sections, files and summary lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from privbench import figures
from privbench.config import RunConfig
from privbench.errors import PrivbenchError
from privbench.metrics import diagonal_mm, dice, region_scores
from privbench.tasks.base import Task


PER_SCAN = "per_scan_dice.csv"
PROTOCOL_PNG = "proxy_examples.png"


@dataclass
class Evaluation:
    """What an evaluation adds to the card: utility rows (one per variant), per-scan scores,
    timings, extra card sections, the files it wrote into the run folder, and summary lines."""

    utility: list[dict[str, Any]]
    per_scan: pd.DataFrame
    timings: dict[str, float]
    sections: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # lines the CLI prints under the Dice table


@dataclass
class Study:
    """What a defense's own study after the attacks (mixup's a-curve) adds to the card."""

    sections: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def evaluate_default(defense: Any, task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
    """One request per test scan (no TTA) through ``defense`` (a
    :class:`~privbench.defenses.base.Defense`, not imported here: that module imports this one):
    Dice per class, the client's and the server's time per volume, and a figure of the first
    scan's request (``proxy_examples.png``)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, example = [], None
    for scan in test_scans(task):
        image, label = task.load(scan)
        key, clock = defense.new_key(generator), Clock()
        proxy = clock("encode", defense.encode, image[None], key)
        output = clock("server", defense.server, proxy)
        probs = clock("decode", defense.decode, output, key)
        pred = probs.argmax(1)
        scores = dice(pred, label[None], task.num_classes)[0]
        rows.append({"variant": "default", "subject": scan.subject, "session": scan.session,
                     **{f"{stage}_seconds": t for stage, t in clock.seconds.items()},
                     "seconds": sum(clock.seconds.values()), **named(task, scores),
                     **region_columns(task, pred[0], label)})
        if example is None:
            example = (image, proxy, output, probs, label)
    per_scan = pd.DataFrame(rows)
    figures.save_atomic(figures.protocol_example(*example, title=defense.name), run_dir / PROTOCOL_PNG)
    return Evaluation(
        utility=[summarise(per_scan, task.class_names[1:], variant="default", regions=task.regions)],
        per_scan=per_scan,
        timings={"infer_seconds_per_volume": float(per_scan["seconds"].mean()),
                 **{f"{stage}_ms_per_volume": 1000 * float(per_scan[f"{stage}_seconds"].mean())
                    for stage in ("encode", "server", "decode")}},
        files={"examples_png": PROTOCOL_PNG},
    )


def summarise(per_scan: pd.DataFrame, classes: tuple[str, ...], variant: str,
              regions: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> dict[str, Any]:
    """Mean and standard deviation over scans of each class's Dice, and their mean; with
    ``regions`` (tumor tasks), the mean region Dice and HD95 (:func:`region_columns`)."""
    table = per_scan[list(classes)]
    scored = [c for c in classes if table[c].notna().any()]  # a class absent from every scan: None
    means = {c: float(np.nanmean(table[c])) if c in scored else None for c in classes}
    out = {
        "variant": variant,
        "n_scans": int(len(table)),
        "dice": {**means, "mean": float(np.mean([means[c] for c in scored])) if scored else None},
        "dice_std": {c: float(np.nanstd(table[c])) if c in scored else None for c in classes},
    }
    if regions:
        out["regions"] = {name: {metric: float(per_scan[f"{name}_{metric}"].mean()) for metric in ("dice", "hd95")}
                          for name, _ in regions}
    return out


def region_columns(task: Task, pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Per-scan region scores of a task with ``regions`` (``WT_dice``, ``WT_hd95``, ...), with
    the BraTS conventions of :func:`privbench.metrics.region_scores` and the volume's diagonal
    as the penalty distance; nothing for other tasks."""
    if not task.regions:
        return {}
    ids = {name: [task.class_names.index(c) for c in names] for name, names in task.regions}
    scores = region_scores(pred, label, ids, task.spacing, diagonal_mm(label.shape, task.spacing))
    return {f"{name}_{metric}": value for name, pair in scores.items() for metric, value in pair.items()}


class Clock:
    """Calls a function and adds its wall time to ``seconds[name]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Any, *args: Any) -> Any:
        began = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
        return out


def test_scans(task: Task) -> list:
    scans = task.scans("test")
    if not scans:
        raise PrivbenchError(f"task {task.name!r} has no test scans to evaluate")
    return scans


def named(task: Task, scores: torch.Tensor) -> dict[str, float]:
    return {name: float(v) for name, v in zip(task.class_names[1:], scores)}
