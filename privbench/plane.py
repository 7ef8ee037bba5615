"""The utility–privacy plane: what each defense keeps (mean Dice) against what the strongest
attacker we ran still gets (the worst case's top-1 identification), one point per defense and
variant, averaged over seeds with 95% intervals as error bars, and the Pareto front marked: the
points no other point beats on both axes at once. A point with a collapsed run (its requests
were the scans) is drawn as a cross and kept off the front."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

UTILITY = "dice_mean"
PRIVACY_LOSS = "worst_identity_top1"  # higher: the attacker names more patients


def points(summary: pd.DataFrame) -> pd.DataFrame:
    """One point per row of a seeds summary (:func:`privbench.seeds.summarise`) that has both a
    Dice and a worst-case identity number: ``label``, ``task``, ``preset``, ``dice``, ``dice_err``,
    ``attack``, ``attack_err`` (95% CI half-widths, 0 with one run), ``runs`` and ``attacked``
    (the runs behind the worst case: those that hold every attack of the group), ``collapsed``
    (``k/n`` runs of the group whose requests are the scans, or None) with ``pareto`` marking
    the front within each task and preset. A point with a collapsed run is never on the front:
    its privacy is not the defense's."""
    need = [f"{UTILITY}_mean", f"{PRIVACY_LOSS}_mean"]
    columns = ["label", "task", "preset", "dice", "dice_err", "attack", "attack_err", "runs", "attacked",
               "collapsed", "pareto"]
    if summary.empty or not set(need) <= set(summary.columns):
        return pd.DataFrame(columns=columns)
    rows = summary.dropna(subset=need)
    err = lambda column: rows[column].fillna(0.0) if column in rows else 0.0  # noqa: E731
    out = pd.DataFrame({"label": rows["defense"] + "/" + rows["variant"].astype(str), "task": rows["task"],
                        "preset": rows["preset"], "dice": rows[need[0]], "dice_err": err(f"{UTILITY}_ci95"),
                        "attack": rows[need[1]], "attack_err": err(f"{PRIVACY_LOSS}_ci95"), "runs": rows["runs"],
                        "attacked": rows.get(f"{PRIVACY_LOSS}_n", rows["runs"]),
                        "collapsed": rows["collapsed"] if "collapsed" in rows else None})
    out["pareto"] = False
    for _, group in out.groupby(["task", "preset"]):
        out.loc[pareto_front(group[~group["collapsed"].map(any_collapsed)]), "pareto"] = True
    return out.reset_index(drop=True)


def any_collapsed(share: object) -> bool:
    """Whether a ``k/n`` share names at least one collapsed run."""
    return isinstance(share, str) and not share.startswith("0/")


def pareto_front(points: pd.DataFrame) -> list:
    """The index of the points that no other point dominates (at least as much Dice and at most
    as much attack success, strictly better in one)."""
    front = []
    for i, p in points.iterrows():
        dominated = any((q.dice >= p.dice and q.attack <= p.attack and (q.dice > p.dice or q.attack < p.attack))
                        for j, q in points.iterrows() if j != i)
        if not dominated:
            front.append(i)
    return front


def figure(points: pd.DataFrame) -> plt.Figure:
    """One panel per task and preset: error bars over seeds, the front as a dashed line through
    ringed points."""
    groups = list(points.groupby(["task", "preset"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.6), squeeze=False)
    for ax, ((task, preset), group) in zip(axes[0], groups):
        for k, p in enumerate(group.itertuples()):
            collapsed = any_collapsed(p.collapsed)
            ax.errorbar(p.attack, p.dice, xerr=p.attack_err, yerr=p.dice_err, fmt="x" if collapsed else "o",
                        color=f"C{k % 10}", capsize=3,
                        label=f"{p.label} (n={p.runs}" + ("" if p.attacked == p.runs else f", worst case n={p.attacked:.0f}")
                        + (f", COLLAPSED {p.collapsed}" if collapsed else "") + ")")
        front = group[group.pareto].sort_values("attack")
        ax.plot(front.attack, front.dice, "k--", lw=1, label="Pareto front")
        ax.scatter(front.attack, front.dice, s=160, facecolors="none", edgecolors="k")
        ax.set(xlabel="worst-case top-1 identification (lower is more private)",
               ylabel="mean Dice (higher is better)", xlim=(-0.03, 1.03), ylim=(0, 1.02))
        ax.set_title(f"{task}, preset {preset}: utility against the strongest attacker", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
