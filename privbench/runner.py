"""One run: task -> defense.fit -> utility evaluation -> card.

:func:`run` is what ``privbench run`` calls. It checks every name before any work starts,
creates (or, with ``resume``, reopens) the run folder, trains the defense, segments every test
scan through the defense's client-server protocol, and writes per-scan scores and the card.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from privbench import card as cards
from privbench import engine
from privbench.config import RunConfig, config_hash, to_dict
from privbench.defenses.base import Defense
from privbench.errors import PrivbenchError
from privbench.metrics import dice
from privbench.registry import DEFENSES, TASKS, create_defense, create_task
from privbench.tasks.base import Task

log = logging.getLogger("privbench")
PER_SCAN = "per_scan_dice.csv"


@dataclass
class RunResult:
    """Where a run wrote its files, and its card."""

    run_dir: Path
    card: dict[str, Any]


def run(cfg: RunConfig, *, out: str | Path = "runs", resume: bool = False,
        progress: bool = True) -> RunResult:
    """Train and evaluate ``cfg.defense`` on ``cfg.task``; write and return the result card.

    With ``resume``, the newest unfinished run of the same config hash under ``out`` is
    continued from its last checkpoint (an error if there is none).
    """
    TASKS.get(cfg.task.name)  # unknown names fail before any work is done
    DEFENSES.get(cfg.defense)
    device = engine.resolve_device(cfg.device)
    digest = config_hash(cfg)
    if resume:
        run_dir = cards.find_resumable(Path(out), cfg.task.name, cfg.defense, digest)
        if run_dir is None:
            raise PrivbenchError(f"nothing to resume: no unfinished {cfg.task.name}/{cfg.defense} "
                                 f"run with config {digest} under {out}")
    else:
        run_dir = cards.new_run_dir(Path(out), cfg.task.name, cfg.defense, digest)
    config = to_dict(cfg)
    cards.write_json_atomic(run_dir / cards.CONFIG, {"config": config, "config_hash": digest})
    with _log_to(run_dir / "run.log"):
        log.info("run %s: task %s, defense %s, preset %s, seed %d, config %s", run_dir.name,
                 cfg.task.name, cfg.defense, cfg.preset, cfg.seed, digest)
        engine.seed_everything(cfg.seed, deterministic=device.type == "cpu")
        began = time.perf_counter()
        task = create_task(cfg.task.name, cfg=cfg)
        data_seconds = time.perf_counter() - began
        log.info("data ready in %.1f s: %s", data_seconds, task.summary())
        defense: Defense = create_defense(cfg.defense)
        report = defense.fit(task, cfg, device=device, progress=progress, workdir=run_dir)
        per_scan = evaluate(defense, task, seed=cfg.seed)
        cards.write_text_atomic(run_dir / PER_SCAN, per_scan.to_csv(index=False))
        utility = summarise(per_scan, task.class_names[1:], variant="default")
        log.info("test dice: %s", utility["dice"])
        card = {
            "card_version": cards.CARD_VERSION,
            "run_id": run_dir.name,
            "task": cfg.task.name,
            "defense": cfg.defense,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "config_hash": digest,
            "config": config,
            **cards.environment(device),
            "amp": engine.amp_active(device, cfg.train.amp),
            "data": task.summary(),
            "timings": {
                "data_seconds": data_seconds,
                "train_seconds": report.seconds,
                "train_iterations": report.iterations,
                "train_resumed_from": report.start_iteration,
                "train_it_per_s": report.it_per_s,
                "infer_seconds_per_volume": float(per_scan["seconds"].mean()),
            },
            "utility": [utility],
            "attacks": [],
            "files": {"checkpoint": engine.CHECKPOINT, "log": "run.log", "per_scan": PER_SCAN},
        }
        cards.write_json_atomic(run_dir / cards.CARD, card)
        log.info("card written to %s", run_dir / cards.CARD)
    return RunResult(run_dir, card)


def evaluate(defense: Defense, task: Task, *, seed: int, tta: int = 1) -> pd.DataFrame:
    """Per-test-scan Dice of ``defense.segment`` and its wall time, one row per scan."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for scan in task.scans("test"):
        image, label = task.load(scan)
        began = time.perf_counter()
        probs = defense.segment(image[None], tta=tta, generator=generator)
        seconds = time.perf_counter() - began
        scores = dice(probs.argmax(1), label[None], task.num_classes)[0]
        rows.append({"subject": scan.subject, "session": scan.session, "seconds": seconds,
                     **{name: float(v) for name, v in zip(task.class_names[1:], scores)}})
    if not rows:
        raise PrivbenchError(f"task {task.name!r} has no test scans to evaluate")
    return pd.DataFrame(rows)


def summarise(per_scan: pd.DataFrame, classes: tuple[str, ...], variant: str) -> dict[str, Any]:
    """Mean and standard deviation over scans of each class's Dice, and their mean."""
    table = per_scan[list(classes)]
    means = {c: float(np.nanmean(table[c])) for c in classes}
    return {
        "variant": variant,
        "n_scans": int(len(table)),
        "dice": {**means, "mean": float(np.mean(list(means.values())))},
        "dice_std": {c: float(np.nanstd(table[c])) for c in classes},
    }


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send privbench's log records to ``path`` for the duration of a run."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    except Exception as exc:
        log.error("run failed: %s", exc)
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()
