"""Dice against training budget: does a defense's gap to the baseline close with more training?

Runs of one task and preset that differ in ``train.iterations`` (each budget its own run: the
learning-rate schedule depends on the total) are read from their cards and per-scan scores.
:func:`table` gives, per defense, variant and budget, the mean Dice over seeds and the gap to
the baseline (``none``) at the same budget. :func:`fit` fits a power law ``gap(n) = c · n^-b``
to a variant's gaps (least squares in log-log), with a 95% interval from a bootstrap over the
test scans (resampled with replacement, the same scans for every run: all share the task's
test split), and says at what budget the fit predicts a gap under ``target`` (0.01 by
default); a budget beyond the largest one measured is an extrapolation and is named so.
:func:`ordering` checks whether the variants keep the paper's order at every budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from privbench.card import CARD, load  # noqa: E402
from privbench.errors import PrivbenchError  # noqa: E402

BASELINE = "none"
TARGET_GAP = 0.01
BOOTSTRAP = 1000
FLAT = 1e-6  # a fitted exponent at or below this: the gap does not shrink
PAPER_ORDER = ("naive", "naive+tta", "learned", "learned+tta")  # Mixup-Privacy's variants, worst to best (Table 1)


def per_scan(root: str | Path) -> pd.DataFrame:
    """Every test scan's mean Dice of every run under ``root``: task, preset, defense, variant,
    seed, iterations, subject, session, dice (mean over the task's classes scored in that scan)."""
    rows = []
    for path in sorted(Path(root).rglob(CARD)):
        card = load(path)
        scores = pd.read_csv(path.parent / card.files["per_scan"])
        classes = [c for c in card.data["classes"][1:] if c in scores]
        scores = scores.assign(dice=scores[classes].mean(axis=1, skipna=True))
        for row in scores.itertuples(index=False):
            rows.append({"task": card.task, "preset": card.preset, "defense": card.defense,
                         "variant": row.variant, "seed": card.seed,
                         "iterations": int(card.config["train"]["iterations"]),
                         "subject": row.subject, "session": row.session, "dice": float(row.dice)})
    if not rows:
        raise PrivbenchError(f"no cards with per-scan scores under {root}")
    return pd.DataFrame(rows)


def table(scans: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice over scans and seeds per task, preset, defense, variant and budget, its number
    of seeds, and the gap to the baseline's best variant at the same budget (None without one)."""
    keys = ["task", "preset", "defense", "variant", "iterations"]
    runs = scans.groupby(keys + ["seed"], as_index=False)["dice"].mean()
    out = runs.groupby(keys, as_index=False).agg(dice=("dice", "mean"), seeds=("seed", "nunique"))
    base = out[out.defense == BASELINE].groupby(["task", "preset", "iterations"])["dice"].max()
    out["gap"] = [base.get((r.task, r.preset, r.iterations), math.nan) - r.dice for r in out.itertuples()]
    return out


@dataclass
class Fit:
    """``gap(n) = scale · n^-exponent`` fitted to a variant's gaps; ``budget``: where it falls to
    the target (inf if it never does), with its bootstrap interval and whether it extrapolates."""

    defense: str
    variant: str
    scale: float
    exponent: float
    budget: float
    budget_low: float
    budget_high: float
    measured_up_to: int
    extrapolated: bool

    def row(self) -> dict[str, Any]:
        """For a table: budgets that are never reached are None and said in ``closes``."""
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        closes = ("never: the fitted gap does not shrink" if not math.isfinite(self.budget) else
                  "extrapolated" if self.extrapolated else "within the measured budgets")
        return {"defense": self.defense, "variant": self.variant, "scale": self.scale,
                "exponent": finite(self.exponent), "budget_for_target": finite(self.budget),
                "budget_ci_low": finite(self.budget_low), "budget_ci_high": finite(self.budget_high),
                "measured_up_to": self.measured_up_to, "closes": closes}


def power_law(iterations: np.ndarray, gaps: np.ndarray) -> tuple[float, float]:
    """Least squares of ``log gap = log scale - exponent · log n``; a gap at or under zero means
    the gap closed there (returned as exponent inf)."""
    if (gaps <= 0).any():
        return 0.0, math.inf
    slope, intercept = np.polyfit(np.log(iterations), np.log(gaps), 1)
    return float(math.exp(intercept)), float(-slope)


def budget_for(scale: float, exponent: float, target: float) -> float:
    """The budget at which ``scale · n^-exponent`` reaches ``target`` (inf if it never falls)."""
    if exponent == math.inf or scale <= target:
        return 0.0
    if exponent <= FLAT:
        return math.inf
    power = math.log(scale / target) / exponent
    return math.exp(power) if power < 700 else math.inf


def _gaps(scans: pd.DataFrame, defense: str, variant: str) -> pd.Series:
    rows = table(scans)
    mine = rows[(rows.defense == defense) & (rows.variant == variant)].dropna(subset=["gap"])
    return mine.set_index("iterations")["gap"].sort_index()


def fit(scans: pd.DataFrame, defense: str, variant: str, target: float = TARGET_GAP,
        resamples: int = BOOTSTRAP, seed: int = 0) -> Fit:
    """The power law of one variant's gap against budget (see the module); at least two budgets."""
    gaps = _gaps(scans, defense, variant)
    if len(gaps) < 2:
        raise PrivbenchError(f"{defense}/{variant}: a budget curve needs runs at two or more budgets "
                             f"with a {BASELINE} run at each (found {list(gaps.index)})")
    scale, exponent = power_law(gaps.index.to_numpy(float), gaps.to_numpy())
    budget = budget_for(scale, exponent, target)
    ids = scans[["subject", "session"]].drop_duplicates().reset_index(drop=True)
    rng, found = np.random.default_rng(seed), []
    for _ in range(resamples):
        drawn = ids.iloc[rng.integers(len(ids), size=len(ids))]
        sample = drawn.merge(scans, on=["subject", "session"])  # a scan drawn twice counts twice
        again = _gaps(sample, defense, variant)
        if len(again) == len(gaps):
            found.append(budget_for(*power_law(again.index.to_numpy(float), again.to_numpy()), target))
    # no interpolation between percentiles, so a resample whose gap never closes stays inf
    low, high = ((np.percentile(found, 2.5, method="lower"), np.percentile(found, 97.5, method="higher"))
                 if found else (math.nan, math.nan))
    measured = int(gaps.index.max())
    return Fit(defense, variant, scale, exponent, budget, float(low), float(high), measured, budget > measured)


def ordering(scans: pd.DataFrame, order: tuple[str, ...] = PAPER_ORDER) -> pd.DataFrame:
    """Per defense whose variants are those of ``order`` and per budget, the variants from worst
    to best mean Dice and whether that is ``order``."""
    rows = table(scans)
    out = []
    for (defense, iterations), group in rows.groupby(["defense", "iterations"]):
        if set(group.variant) == set(order):
            found = tuple(group.sort_values("dice").variant)
            out.append({"defense": defense, "iterations": iterations, "order": " < ".join(found),
                        "as_paper": found == order})
    return pd.DataFrame(out)


def figure(rows: pd.DataFrame, fits: list[Fit], target: float = TARGET_GAP) -> plt.Figure:
    """Dice against budget (left) and the gaps with their fits on log-log axes (right); the
    fitted lines are dashed beyond the largest measured budget (extrapolation)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (defense, variant), group in rows.groupby(["defense", "variant"]):
        left.plot(group.iterations, group.dice, marker="o", label=f"{defense}/{variant}")
    left.set(xscale="log", xlabel="training iterations", ylabel="mean test Dice", title="Dice against budget")
    left.legend(fontsize=7)
    for k, f in enumerate(fits):
        gaps = rows[(rows.defense == f.defense) & (rows.variant == f.variant)]
        right.scatter(gaps.iterations, gaps.gap.clip(lower=1e-4), color=f"C{k}", label=f"{f.defense}/{f.variant}")
        if f.exponent not in (math.inf,) and f.scale > 0:
            end = max(f.measured_up_to * 10, min(f.budget, f.measured_up_to * 1000) if math.isfinite(f.budget) else 0)
            grid = np.geomspace(gaps.iterations.min(), end, 50)
            inside = grid <= f.measured_up_to
            right.plot(grid[inside], f.scale * grid[inside] ** -f.exponent, color=f"C{k}")
            right.plot(grid[~inside], f.scale * grid[~inside] ** -f.exponent, "--", color=f"C{k}")
    right.axhline(target, color="k", lw=0.8, ls=":")
    right.set(xscale="log", yscale="log", xlabel="training iterations", ylabel=f"gap to {BASELINE}'s Dice",
              title="gap and power-law fit (dashed: extrapolation)")
    if fits:
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "a fit needs two or more budgets", ha="center", transform=right.transAxes)
    fig.tight_layout()
    return fig


def write(root: str | Path, csv_path: str | Path, target: float = TARGET_GAP) -> list[Fit]:
    """The budget study of the cards under ``root``: the table (``csv_path`` and its ``.md``),
    the fits (``<stem>-fit.csv``), the variants' order per budget and the figure
    (``<stem>.png``), each written atomically; returns the fits."""
    from privbench.card import write_text_atomic
    from privbench.figures import save_atomic
    from privbench.leaderboard import to_markdown

    csv_path = Path(csv_path)
    scans = per_scan(root)
    rows = table(scans)
    curves = rows[rows.defense != BASELINE].groupby(["defense", "variant"]).iterations.nunique()
    fits = [fit(scans, d, v, target) for (d, v), budgets in curves.items() if budgets >= 2]
    fitted = pd.DataFrame([f.row() for f in fits])
    order = ordering(scans)
    write_text_atomic(csv_path, rows.to_csv(index=False))
    write_text_atomic(csv_path.with_name(f"{csv_path.stem}-fit.csv"), fitted.to_csv(index=False))
    text = ("Mean test Dice over scans and seeds at each training budget, and the gap to the best "
            f"`{BASELINE}` variant at the same budget (`privbench.budget`).\n\n" + to_markdown(rows))
    if fits:
        text += (f"\n### Power-law fit of the gap\n\n`gap(n) = scale · n^-exponent`, least squares in log-log; "
                 f"`budget_for_target`: where the fit reaches a gap of {target}, with a 95% bootstrap interval "
                 "over the test scans; beyond `measured_up_to` it is an extrapolation.\n\n" + to_markdown(fitted))
    if not order.empty:
        text += "\n### The order of the variants (the paper's: " + " < ".join(PAPER_ORDER) + ")\n\n" + to_markdown(order)
    write_text_atomic(csv_path.with_suffix(".md"), text)
    save_atomic(figure(rows, fits, target), csv_path.with_suffix(".png"))
    return fits
