"""The comparison at matched privacy: what each defense keeps when it must hide as much.

A defense's Dice means nothing without the privacy it was bought at, and every defense has a
knob (λ, a deformation's size, mixup's range of ``a``). From the summary over seeds
(:func:`privbench.seeds.summarise`), where each row is one setting of a defense (a point of its
curve), :func:`table` answers, per task, preset and defense:

- the best Dice among its points whose MS-SSIM re-identification F1 is at most the level its
  paper reports (the registry entry's ``published["reid_f1"]``: the Mixup-Privacy paper's Table
  2 on PPMI for the built-in defenses), and among those whose worst-case identity top-1 is at
  most 0.5 and 0.25, or "not reached";
- the other way round, its most private point (lowest worst-case top-1) among those whose Dice
  is within 0.05 of the baseline's (``none``'s best Dice in the same task and preset).

A point with a collapsed run (its requests were the scans) is never a private operating point
and is left out. Dice is the mean over seeds with its 95% interval.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from privbench.plane import any_collapsed

TOP1_LEVELS = (0.5, 0.25)
DICE_MARGIN = 0.05  # "costs little": within this much of the baseline's Dice
BASELINE = "none"
DICE, REID_F1, TOP1 = "dice_mean", "reid_f1", "worst_identity_top1"
NOT_REACHED = "not reached"
COLUMNS = ["task", "preset", "defense", "points", f"{REID_F1} <= paper",
           *(f"top-1 <= {level}" for level in TOP1_LEVELS), f"top-1 at Dice >= {BASELINE} - {DICE_MARGIN}"]


def published(defense: str) -> dict[str, float]:
    """What the defense's paper reports (its registry entry), nothing for an unknown one."""
    from privbench.registry import DEFENSES

    return DEFENSES.get(defense).published if defense in DEFENSES.names() else {}


def _mean(row: pd.Series, metric: str) -> float:
    value = row.get(f"{metric}_mean")
    return float(value) if value is not None and not pd.isna(value) else math.nan


def _dice(row: pd.Series) -> str:
    ci = row.get(f"{DICE}_ci95")
    interval = "" if ci is None or pd.isna(ci) else f" ± {ci:.3f}"
    return f"{_mean(row, DICE):.3f}{interval} (n={int(row['runs'])}; {_where(row)})"


def _where(row: pd.Series) -> str:
    """The point: its variant and what it changes from the defaults."""
    changes = row.get("changes")
    return f"{row['variant']}" + (f", {changes}" if isinstance(changes, str) and changes else ", defaults")


def _best_dice(points: pd.DataFrame, metric: str, level: float) -> str:
    """The best-Dice point whose mean ``metric`` is at most ``level``."""
    private = points[points.apply(lambda r: _mean(r, metric) <= level, axis=1)]
    if private.empty:
        return NOT_REACHED
    return _dice(private.loc[private.apply(lambda r: _mean(r, DICE), axis=1).idxmax()])


def _most_private(points: pd.DataFrame, floor: float) -> str:
    """The lowest worst-case top-1 among the points whose mean Dice reaches ``floor``."""
    useful = points[points.apply(lambda r: _mean(r, DICE) >= floor and not math.isnan(_mean(r, TOP1)), axis=1)]
    if math.isnan(floor):
        return f"no {BASELINE} run"  # nothing to measure "within 0.05 of none" against
    if useful.empty:
        return NOT_REACHED
    best = useful.loc[useful.apply(lambda r: _mean(r, TOP1), axis=1).idxmin()]
    return f"{_mean(best, TOP1):.3f} at Dice {_dice(best)}"


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per task, preset and defense (see the module); empty where the summary has no Dice."""
    privacy = {f"{REID_F1}_mean", f"{TOP1}_mean"}
    if summary.empty or f"{DICE}_mean" not in summary or not privacy & set(summary.columns):
        return pd.DataFrame(columns=COLUMNS)
    scored = summary.dropna(subset=[f"{DICE}_mean"])
    honest = scored[~scored.get("collapsed", pd.Series(None, index=scored.index)).map(any_collapsed)]
    rows: list[dict[str, Any]] = []
    for (task, preset), group in honest.groupby(["task", "preset"], sort=True):
        baseline = group[group.defense == BASELINE]
        floor = baseline.apply(lambda r: _mean(r, DICE), axis=1).max() - DICE_MARGIN if len(baseline) else math.nan
        for defense, points in group.groupby("defense", sort=True):
            level = published(defense).get(REID_F1)
            row = {"task": task, "preset": preset, "defense": defense, "points": len(points),
                   f"{REID_F1} <= paper": (f"(paper {level}) " + _best_dice(points, REID_F1, level)
                                           if level is not None else "no paper level")}
            row |= {f"top-1 <= {lv}": _best_dice(points, TOP1, lv) for lv in TOP1_LEVELS}
            row[COLUMNS[-1]] = _most_private(points, floor)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
