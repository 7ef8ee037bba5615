"""Result cards -> leaderboard tables (CSV and Markdown).

Every card found under a folder (schema version 1 or 2) contributes one row per evaluated
variant: task, defense, variant, the attacks run, seed, the run's worst case, Dice, the
attacks' headline metrics, timings, config hash and setting (the hash without the seed). A
second table names the worst case per defense over all its runs (:mod:`privbench.worst_case`),
a third summarises the runs that differ only in seed (mean ± 95% CI, :mod:`privbench.seeds`).
Cards that cannot be read are reported, not fatal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from privbench import collapse, figures, matched, plane, seeds, worst_case
from privbench.card import CARD, STOPPED, Card, load, write_text_atomic
from privbench.errors import PrivbenchError

ID_COLUMNS = ["task", "defense", "variant", "attack", "seed", "preset", "changes"]
WORST_COLUMNS = list(worst_case.IDENTITY_COLUMNS + worst_case.RECOVERY_COLUMNS) + [worst_case.VERDICT]
TIMING_COLUMNS = ["train_seconds", "train_it_per_s", "infer_seconds_per_volume"]
TAIL_COLUMNS = TIMING_COLUMNS + ["config_hash", "setting", "run_id"]
MATCHED_NOTE = ("Each defense's best mean Dice (± 95% CI over seeds) among its points (settings) whose MS-SSIM "
                "re-identification F1 stays at or below the paper's for that defense, and whose worst-case "
                "identity top-1 stays at or below 0.5 and 0.25; then its lowest worst-case top-1 among the points "
                "whose Dice is within 0.05 of `none`'s. Points with a collapsed run are left out "
                "(`privbench.matched`).\n\n")


@dataclass
class Leaderboard:
    """The rows built from readable cards, the cards that could not be read (path, reason), and
    the run folders that stopped on a non-finite number without a card."""

    table: pd.DataFrame
    unreadable: list[tuple[Path, str]]
    worst: pd.DataFrame = field(default_factory=pd.DataFrame)  # strongest attacks per (task, preset, defense)
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs differing only in seed, summarised
    stopped: list[Path] = field(default_factory=list)


def card_rows(card: Card) -> list[dict[str, Any]]:
    """One flat row per utility variant of a card; each attack's headline metrics are columns
    (``<label>_<metric>``) of every row, and ``attack`` lists the attacks that ran."""
    done = [entry for entry in card.attacks if entry.get("status") == "done"]
    common = {"task": card.task, "defense": card.defense, "seed": card.seed,
              "attack": ",".join(entry["label"] for entry in done),
              "preset": card.preset, "changes": seeds.changes(card.config),
              "config_hash": card.config_hash, "setting": seeds.setting(card.config),
              "run_id": card.run_id, **{k: card.timings.get(k) for k in TIMING_COLUMNS},
              **{f"{entry['label']}_{k}": v for entry in done for k, v in entry["metrics"].items()},
              **worst_case.columns(card.attacks), **encoding_columns(card.sections)}
    return [{**common, "variant": entry["variant"],
             **{f"dice_{name}": value for name, value in entry["dice"].items()},
             **{f"region_{metric}_{name}": value for name, scores in entry.get("regions", {}).items()
                for metric, value in scores.items()}}
            for entry in card.utility]


def encoding_columns(sections: dict[str, Any]) -> dict[str, Any]:
    """A card's encoding verdict (``encoding``: no encoding, encodes, collapsed; None for older
    cards) and its numbers (``request_msssim``, a deformation's ``displacement_mm_mean``, ...)."""
    measured = sections.get("encoding") if isinstance(sections.get("encoding"), dict) else {}
    return {worst_case.VERDICT: collapse.of_card(sections),
            **{k: v for k, v in measured.items() if k not in ("scans", "collapsed_at", "verdict")}}


def collect(root: str | Path) -> Leaderboard:
    """Read every ``card.json`` below ``root`` into one table."""
    root = Path(root)
    if not root.is_dir():
        raise PrivbenchError(f"no such folder: {root}")
    rows: list[dict[str, Any]] = []
    unreadable: list[tuple[Path, str]] = []
    for path in sorted(root.rglob(CARD)):
        try:
            rows += card_rows(load(path))
        except PrivbenchError as exc:
            unreadable.append((path, str(exc)))
        except KeyError as exc:
            unreadable.append((path, f"malformed card: missing {exc}"))
        except (TypeError, AttributeError, ValueError) as exc:  # a field of the wrong type
            unreadable.append((path, f"malformed card: {exc}"))
    table = pd.DataFrame(rows)
    if not table.empty:
        metrics = sorted(c for c in table.columns if c not in ID_COLUMNS + WORST_COLUMNS + TAIL_COLUMNS)
        table = table[ID_COLUMNS + WORST_COLUMNS + metrics + TAIL_COLUMNS].sort_values(["task", "defense", "variant", "seed"], kind="stable")
    table = table.reset_index(drop=True)
    stopped = sorted(path.parent for path in root.rglob(STOPPED) if not (path.parent / CARD).exists())
    return Leaderboard(table, unreadable, worst_case.per_defense(table), seeds.summarise(table), stopped)


def select(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The identifying columns and ``columns`` only, e.g. ``dice_mean``, ``reid_f1`` and
    ``reid_map`` for the shape of the paper's Table 2; an unknown column is an error that names
    the known ones."""
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        known = ", ".join(c for c in table.columns if c not in ID_COLUMNS)
        raise PrivbenchError(f"no column {', '.join(map(repr, unknown))} in the leaderboard (known: {known})")
    return table[ID_COLUMNS + [c for c in columns if c not in ID_COLUMNS]]


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (floats rounded to ``digits``)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write(board: Leaderboard, csv_path: str | Path, markdown_path: str | Path | None = None) -> None:
    """Write the CSV (and the Markdown table, by default beside it as ``.md``) atomically, the
    worst case per defense as ``<name>-worst-case.csv`` and the summary over seeds as
    ``<name>-seeds.csv``, each also as a section of the Markdown (the summary of the metrics the
    table shows, timings left out), and the utility–privacy plane as ``<name>-plane.png`` where
    runs have both a Dice and a worst-case identity number."""
    csv_path = Path(csv_path)
    markdown_path = Path(markdown_path) if markdown_path else csv_path.with_suffix(".md")
    shown = [c for c in board.table.columns if c not in TIMING_COLUMNS]
    summary = board.seeds[[c for c in board.seeds.columns if c in seeds.SUMMARY_IDS
                           or c.rsplit("_", 1)[0] in shown]] if not board.seeds.empty else board.seeds
    write_text_atomic(csv_path, board.table.to_csv(index=False))
    write_text_atomic(csv_path.with_name(f"{csv_path.stem}-worst-case.csv"), board.worst.to_csv(index=False))
    write_text_atomic(csv_path.with_name(f"{csv_path.stem}-seeds.csv"), summary.to_csv(index=False))
    at_matched = matched.table(board.seeds)
    if not at_matched.empty:
        write_text_atomic(csv_path.with_name(f"{csv_path.stem}-matched.csv"), at_matched.to_csv(index=False))
    write_text_atomic(markdown_path, to_markdown(board.table) + "\n### Worst case per defense\n\n"
                      "The strongest identity attack (top-1, TPR at 1% FPR) and recovery attack (MS-SSIM) "
                      "over every run of the defense; `collapsed` counts its runs whose requests are "
                      "nearly the scans (request-to-scan MS-SSIM >= 0.99): they hide nothing, whatever "
                      "their attack numbers.\n\n" + to_markdown(board.worst)
                      + "\n### Over seeds\n\nRuns that differ only in their seed: mean ± the half-width of "
                      "a 95% confidence interval (Student's t; none with one run, `(n=k)` where fewer runs "
                      "have the metric).\n\n" + seeds.to_markdown(summary)
                      + ("" if at_matched.empty else "\n### At matched privacy\n\n" + MATCHED_NOTE + to_markdown(at_matched)))
    shown_points = plane.points(board.seeds)
    if len(shown_points):
        figures.save_atomic(plane.figure(shown_points), csv_path.with_name(f"{csv_path.stem}-plane.png"))
