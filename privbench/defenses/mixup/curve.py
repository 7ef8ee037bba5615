"""The utility–privacy curve of one trained mixup system over the mixing weight ``a``.

For each fixed ``a`` in ``mixup.curve_a`` every request of the client uses that weight: the
four Dice variants (naive and learned unmixing, with one reference or ``mixup.tta``) are measured
on the first ``mixup.curve_scans`` test scans, and every attack of the run that applies to mixup
runs again (its files go to ``a_curve/a=<a>/``) with keys of its own at each level: the same
scan mixed with the same reference at two weights would give the scan away by solving two
equations. Written as ``a_curve.csv`` (one row per a),
``a_curve.png`` (Dice against each attack's headline number, one point per a) and the card's
``a_curve`` rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privbench import card as cards
from privbench import figures, streams
from privbench.attacks.base import Attack, execute
from privbench.defenses.mixup.plots import utility_privacy_curve as curve_figure
from privbench.config import RunConfig
from privbench.evaluation import Study
from privbench.metrics import dice
from privbench.tasks.base import Task

log = logging.getLogger("privbench")
CSV = "a_curve.csv"
PNG = "a_curve.png"
FOLDER = "a_curve"


def variant_dice(defense: Any, task: Task, cfg: RunConfig) -> dict[str, float]:
    """Mean test Dice (over classes, then scans) of the four variants on ``mixup.curve_scans``
    test scans, with keys drawn from the defense's current weight range."""
    generator = streams.generator(cfg.seed, "client", "a-curve")
    scores: dict[str, list[float]] = {v: [] for v in ("naive", "naive+tta", "learned", "learned+tta")}
    for scan in task.scans("test")[: cfg.mixup.curve_scans]:
        image, label = task.load(scan)
        key = defense.new_key(generator, k=cfg.mixup.tta)
        mixed = defense.server(defense.encode(image[None], key))
        for unmix in ("naive", "learned"):
            probs = defense.decode(mixed, key, unmix)
            for variant, pred in ((unmix, probs[:1]), (f"{unmix}+tta", probs.mean(0, keepdim=True))):
                scores[variant].append(float(np.nanmean(dice(pred.argmax(1), label[None], task.num_classes))))
    return {f"dice_{variant}": float(np.nanmean(values)) for variant, values in scores.items()}


def utility_privacy_curve(defense: Any, task: Task, cfg: RunConfig, attacks: list[Attack], *,
                          run_dir: Path, progress: bool = True, secret: int | None = None) -> Study:
    """Dice and the attacks' headline numbers at each ``a`` of ``mixup.curve_a`` (see the module);
    the attacks' keys come from the client ``secret`` (a fresh one when None)."""
    rows, saved, headlines = [], defense.eval_range, {}
    applicable = [attack for attack in attacks if attack.applies(cfg.defense)]
    try:
        for a in cfg.mixup.curve_a:
            defense.eval_range = (a, a)
            row: dict[str, Any] = {"a": a, **variant_dice(defense, task, cfg)}
            folder = run_dir / FOLDER / f"a={a:g}"
            folder.mkdir(parents=True, exist_ok=True)
            for attack in applicable:
                result = execute(attack, defense, task, cfg, run_dir=folder, progress=progress,
                                 secret=secret, scenario=f"a={a:g}")  # fresh keys at each level
                label = result.label or attack.name
                row |= {f"{label}_{k}": v for k, v in result.metrics.items()}
                headlines[f"{label}_{attack.headline}"] = label
            log.info("a-curve at a=%g: %s", a, row)
            rows.append(row)
    finally:
        defense.eval_range = saved
    table = pd.DataFrame(rows)
    cards.write_text_atomic(run_dir / CSV, table.to_csv(index=False))
    figures.save_atomic(curve_figure(table, headlines), run_dir / PNG)
    return Study({"a_curve": rows}, {"a_curve_csv": CSV, "a_curve_png": PNG})
