"""Convergence evidence for one run (in the manner of nnU-Net's progress plot): the training
curve of ``progress.csv`` (each loss, and the validation Dice every ``train.validate_every``
iterations) drawn as ``progress.png``, and a verdict on whether the validation Dice has stopped
rising: the mean over the last fifth of training against the mean over the fifth before it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from privbench import figures  # noqa: E402

CSV = "progress.csv"
PNG = "progress.png"
PLATEAU_GAIN = 0.01  # a Dice gain below this over the last fifth of training counts as a plateau


def verdict(curve: pd.DataFrame, iterations: int, tolerance: float = PLATEAU_GAIN) -> dict[str, Any]:
    """Whether the validation Dice of ``curve`` has plateaued by ``iterations``: the gain of
    its mean over the last fifth of training, ``(0.8 n, n]``, over the fifth before it,
    ``(0.6 n, 0.8 n]``. ``plateaued`` is None where either fifth holds no validation."""
    scored = curve.dropna(subset=["val_dice"]) if "val_dice" in curve else curve.iloc[:0]
    out: dict[str, Any] = {"validations": int(len(scored)), "plateau_tolerance": tolerance,
                           "final_val_dice": None, "best_val_dice": None, "best_iteration": None,
                           "gain_last_fifth": None, "plateaued": None}
    if scored.empty:
        return out
    best = scored.loc[scored["val_dice"].idxmax()]
    out.update(final_val_dice=float(scored["val_dice"].iloc[-1]), best_val_dice=float(best["val_dice"]),
               best_iteration=int(best["iteration"]))
    it = scored["iteration"]
    last = scored.loc[it > 0.8 * iterations, "val_dice"]
    before = scored.loc[(it > 0.6 * iterations) & (it <= 0.8 * iterations), "val_dice"]
    if len(last) and len(before):
        gain = float(last.mean() - before.mean())
        if math.isfinite(gain):
            out.update(gain_last_fifth=gain, plateaued=gain < tolerance)
    return out


def figure(curve: pd.DataFrame, title: str) -> plt.Figure:
    """Losses (left) and validation Dice (right) against iterations."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = [c for c in curve.columns if c != "iteration" and not c.startswith("val_")]
    for column in losses:
        rows = curve.dropna(subset=[column])
        left.plot(rows["iteration"], rows[column], label=column)
    left.set(xlabel="iteration", ylabel="loss (mean over each logging interval)", title="training loss")
    if left.lines:
        left.legend(fontsize=8)
    for column in [c for c in curve.columns if c.startswith("val_dice")]:
        rows = curve.dropna(subset=[column])
        right.plot(rows["iteration"], rows[column], marker="o" if column == "val_dice" else None,
                   lw=2 if column == "val_dice" else 0.8,
                   label="mean" if column == "val_dice" else column.removeprefix("val_dice_"))
    right.set(xlabel="iteration", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    if right.lines:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no validation scans", ha="center", transform=right.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def report(run_dir: Path, iterations: int, title: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """From ``run_dir/progress.csv``: the card's ``convergence`` section, the files (the CSV and
    ``progress.png``) and a summary line; nothing where the run wrote no curve."""
    path = Path(run_dir) / CSV
    if not path.is_file():
        return {}, {}, []
    curve = pd.read_csv(path)
    figures.save_atomic(figure(curve, title), Path(run_dir) / PNG)
    found = verdict(curve, iterations)
    if found["plateaued"] is None:
        line = (f"convergence: validation Dice {found['final_val_dice']:.3f} at the end; too few validations "
                "to judge a plateau" if found["final_val_dice"] is not None else
                "convergence: no validation scans (task.validation_subjects, train.validate_every)")
    else:
        state = "plateaued" if found["plateaued"] else "still rising"
        line = (f"convergence: validation Dice {found['final_val_dice']:.3f} at iteration {iterations}, "
                f"{found['gain_last_fifth']:+.3f} over the last fifth of training: {state}")
    return found, {"progress_csv": CSV, "progress_png": PNG}, [line]
