"""Runs that differ only in their seed, summarised: one seed is an anecdote, not a result.

The leaderboard groups its rows by task, defense, variant, preset and **setting** (the config
hash of the run with its seed and its list of attacks set aside, :func:`setting`: attacks train
nothing and change no Dice, so a seed's run joins its group whichever attacks it holds, while
the attacks' own settings still count) and reports, for every numeric column, the mean, the
sample standard deviation, the number of runs that have it and the half-width of a two-sided 95%
confidence interval of the mean from Student's t distribution (``t(0.975, n-1) * std /
sqrt(n)``; MLPerf and RobustBench report several seeds the same way).
With one run there is no spread: std and interval are left empty, never shown as 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from privbench import worst_case

GROUP_COLUMNS = ["task", "defense", "variant", "preset", "setting"]
NOT_METRICS = {"seed", "config_hash", "run_id", "setting"}
STATISTICS = ("mean", "std", "n", "ci95")
SUMMARY_IDS = GROUP_COLUMNS + ["changes", "attack", "runs", "seeds", "collapsed"]  # the summary's identifying columns
# the worst case over the attacks a run holds: averaged only over the group's runs that hold every
# attack any of them holds, so a seed attacked by fewer (weaker) attackers cannot look private
WORST_PREFIX = "worst_"


def setting(config: dict[str, Any]) -> str:
    """The config hash of a card's config with the seed and the list of attacks set aside (hashed
    as if every registered attack had run, so each attack's section counts whether it ran or
    not): runs with equal settings differ only in their seed and which attacks they hold. A
    config this code cannot rebuild (an unknown plugin's, an old card's) is hashed as written,
    without its seed, device and attack list."""
    from privbench.config import config_hash, from_dict
    from privbench.registry import list_attacks

    try:
        cfg = from_dict(config)
        cfg.seed, cfg.attacks = 0, tuple(list_attacks())
        return config_hash(cfg)
    except Exception:  # noqa: BLE001  (anything from_dict cannot read: hash the plain data)
        plain = {k: v for k, v in config.items() if k not in ("seed", "device", "attacks")}
        return "raw-" + hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:8]


def changes(config: dict[str, Any]) -> str | None:
    """What sets a card's setting apart from its preset's defaults for its task and defense, as
    ``key=value`` pairs (``adversary.weight=3.0 deformation.displacement_mm=2.0``): the
    result-changing fields of the run-level and the defense's sections, never the seed, the
    attacks or their settings ("" for the defaults; None where this code cannot rebuild the
    config: an unknown plugin's, an old card's)."""
    from privbench.config import RUN_SECTIONS, from_dict, resolve, result_fields
    from privbench.registry import DEFENSES

    try:
        cfg = from_dict(config)
        default = resolve(cfg.preset, {"task.name": cfg.task.name}, defense=cfg.defense)
        sections = [*RUN_SECTIONS, *(name for name, _ in DEFENSES.get(cfg.defense).sections)]
    except Exception:  # noqa: BLE001  (anything from_dict or the registry cannot read)
        return None
    mine, base = result_fields(cfg, sections), result_fields(default, sections)
    return " ".join(f"{k}={mine[k]}" for k in sorted(mine) if mine[k] != base.get(k))


def interval(values: Any) -> dict[str, float]:
    """Mean, sample std, n and the 95% CI half-width of the finite ``values`` (NaN where
    undefined: no values, or fewer than two for std and CI)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n >= 2 else math.nan
    return {"mean": mean, "std": std, "n": n, "ci95": half}


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The numeric columns that are measurements (not identifiers)."""
    return [c for c in table.columns if c not in NOT_METRICS and c not in SUMMARY_IDS
            and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per group of runs that differ only in seed: the group's columns, ``attack`` (every
    attack any of its runs holds), ``changes`` (from the defaults, :func:`changes`), ``runs``, ``seeds``, ``collapsed`` (``k/n`` of the runs with an
    encoding verdict, :func:`privbench.worst_case.collapsed_share`) and ``<metric>_mean``, ``_std``, ``_n``,
    ``_ci95`` for every metric (``_n`` counts the runs that have it; for the worst-case columns,
    only the runs that hold all of ``attack``)."""
    if table.empty or not set(GROUP_COLUMNS) <= set(table.columns):
        return pd.DataFrame(columns=SUMMARY_IDS)
    metrics = metric_columns(table)
    rows = []
    for keys, group in table.groupby(GROUP_COLUMNS, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, keys))
        lists = group["attack"].fillna("").map(lambda listed: [name for name in listed.split(",") if name])
        held = dict.fromkeys(name for names in lists for name in names)  # every attack, in order
        row |= {"changes": group["changes"].iloc[0] if "changes" in group else None,
                "attack": ",".join(held), "runs": len(group),
                "seeds": ",".join(str(s) for s in sorted(group["seed"].unique())),
                "collapsed": worst_case.collapsed_share(group)}
        complete = group[lists.map(lambda names: set(names) == set(held))]  # the worst case depends on them
        for metric in metrics:
            runs = complete if metric.startswith(WORST_PREFIX) else group
            summary = interval(pd.to_numeric(runs[metric], errors="coerce").tolist())
            if summary["n"]:
                row |= {f"{metric}_{k}": v for k, v in summary.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def cell(row: pd.Series, metric: str, digits: int = 3) -> str:
    """``mean ± ci95``, with ``(n=k)`` where fewer runs than the group's have the metric; the
    mean alone (and its n) where there is no interval."""
    n = row.get(f"{metric}_n")
    if n is None or pd.isna(n) or n == 0:
        return ""
    text = f"{row[f'{metric}_mean']:.{digits}f}"
    if not pd.isna(row[f"{metric}_ci95"]):
        text += f" ± {row[f'{metric}_ci95']:.{digits}f}"
    return text + (f" (n={int(n)})" if int(n) < row["runs"] or int(n) == 1 else "")


def to_markdown(summary: pd.DataFrame, metrics: list[str] | None = None, digits: int = 3) -> str:
    """The summary as a Markdown table of ``mean ± 95% CI`` cells (``metrics``: which, by
    default every metric)."""
    if summary.empty:
        return "(no runs)\n"
    found = list(dict.fromkeys(c.rsplit("_", 1)[0] for c in summary.columns if c.endswith("_mean")))
    metrics = [m for m in (metrics or found) if f"{m}_mean" in summary.columns]
    ids = [c for c in SUMMARY_IDS if c != "setting"]
    lines = ["| " + " | ".join(ids + metrics) + " |", "|" + "---|" * (len(ids) + len(metrics))]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join([*(str(row[c]) if not pd.isna(row[c]) else "" for c in ids),
                                         *(cell(row, m, digits) for m in metrics)]) + " |")
    return "\n".join(lines) + "\n"
