"""The regression gate: does this commit still give the committed numbers?

:func:`run_suite` runs a fixed, small suite (:data:`SUITE`, the ``ci`` preset: every built-in
defense with identity attacks on the embedded cohort, a few minutes on two CPU cores);
:func:`compare` matches its cards with the baseline cards committed under
``benchmarks/baselines/`` (by task, defense and preset) and checks every headline number, each
within the tolerance of its kind (:func:`tolerance`). Speed is compared as ratios measured in
one run (each defense's training and inference speed over ``none``'s), so the gate does not
depend on how fast the machine is. A number that moved outside its tolerance, in either
direction, or that is missing, fails the gate; a number the baseline lacks is listed as new.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
import pandas as pd

from privbench import card as cards
from privbench import config, runner
from privbench.errors import PrivbenchError

PRESET = "ci"
SUITE = (("none", ("reid", "linkage")), ("mixup", ("reid", "linkage")),
         ("privacy-net", ("reid", "linkage")), ("deformation", ("reid", "linkage")))
SPEED = ("train_it_per_s", "infer_seconds_per_volume")
REFERENCE = "none"  # speeds are ratios to this defense's, measured in the same run
# The gate's client secret, fixed and public: its attacks must see the same keys on every
# machine to compare like with like (a real run draws its secret from the operating system).
SECRET = int.from_bytes(b"privbench regression gate".ljust(32, b"."), "big")


# Dice tolerance of defenses whose training amplifies float32 rounding: privacy-net's min-max
# game, 20 iterations from its start, gave WM Dice 0.397 on an AMD EPYC without AVX512 and 0.482
# (deterministic, twice) on one with AVX512 at the same code, while the other defenses matched
# to the third digit.
DICE_TOLERANCE_BY_DEFENSE = {"privacy-net": 0.15}


def tolerance(metric: str) -> tuple[float, str]:
    """The allowed change of a metric (``<task>/<defense>/<preset>/.../<name>``) and its kind:
    Dice and MS-SSIM move with the CPU and its thread count (about ±0.01 on the quick preset;
    more for :data:`DICE_TOLERANCE_BY_DEFENSE`), identity rates on ten requests move in steps
    of 0.1, speed ratios with the load on a shared machine."""
    parts = metric.split("/")
    leaf = parts[-1]
    if leaf.startswith("speed_"):  # a ratio may halve or double: beyond that, something changed
        return 1.0, "relative"
    if "dice" in leaf:
        return DICE_TOLERANCE_BY_DEFENSE.get(parts[1] if len(parts) > 2 else "", 0.05), "absolute"
    if "msssim" in leaf or "ssim" in leaf:
        return 0.05, "absolute"
    return 0.25, "absolute"


def numbers(card: cards.Card) -> dict[str, float]:
    """A card's headline numbers by name: ``<variant>/dice_<class>`` for every utility
    variant, ``<attack label>/<metric>`` for every finished attack."""
    out: dict[str, float] = {}
    if not isinstance(card.utility, list) or not all(isinstance(e, dict) for e in card.utility):
        raise PrivbenchError(f"'utility' must be a list of variants, not {card.utility!r}")
    for entry in card.utility:
        dice = entry.get("dice")
        if not isinstance(dice, dict) or not isinstance(entry.get("variant"), str):
            raise PrivbenchError(f"each 'utility' variant needs a 'variant' name and a 'dice' table, not {entry!r}")
        for name, value in dice.items():
            if value is not None and not _is_number(value):
                raise PrivbenchError(f"'utility' {entry['variant']} dice {name} must be a number, not {value!r}")
            if value is not None:
                out[f"{entry['variant']}/dice_{name}"] = float(value)
    for entry in card.attacks:
        if isinstance(entry, dict) and entry.get("status") == "done" and isinstance(entry.get("metrics"), dict):
            for name, value in entry["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{entry['label']}/{name}"] = float(value)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def speed_ratios(suite: dict[tuple[str, str, str], cards.Card]) -> dict[tuple[str, str, str], dict[str, float]]:
    """Each run's training and inference speed over the reference defense's in the same suite."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for key, card in suite.items():
        reference = suite.get((key[0], REFERENCE, key[2]))
        if reference is None or key[1] == REFERENCE:
            continue
        ratios = {}
        for name in SPEED:
            mine, theirs = card.timings.get(name), reference.timings.get(name)
            if mine and theirs:
                ratios[f"speed_{name}_vs_{REFERENCE}"] = float(mine) / float(theirs)
        out[key] = ratios
    return out


def load_cards(folder: str | Path) -> dict[tuple[str, str, str], cards.Card]:
    """Every card under ``folder`` by (task, defense, preset); the newest where runs repeat."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrivbenchError(f"no such folder: {folder}")
    found: dict[tuple[str, str, str], cards.Card] = {}
    for path in sorted(folder.rglob(cards.CARD)):
        card = cards.load(path)
        try:
            numbers(card)  # a hand-edited card is checked now, naming its file
        except PrivbenchError as exc:
            raise PrivbenchError(f"{path}: {exc}") from None
        key = (card.task, card.defense, card.preset)
        if key not in found or card.run_id > found[key].run_id:
            found[key] = card
    if not found:
        raise PrivbenchError(f"no result cards under {folder}")
    return found


def _flat(suite: dict[tuple[str, str, str], cards.Card]) -> dict[str, float]:
    ratios = speed_ratios(suite)
    return {f"{'/'.join(key)}/{name}": value for key, card in suite.items()
            for name, value in {**numbers(card), **ratios.get(key, {})}.items()}


def compare(baseline: dict[tuple[str, str, str], cards.Card],
            current: dict[tuple[str, str, str], cards.Card]) -> pd.DataFrame:
    """One row per number: ``metric``, ``baseline``, ``now``, ``delta``, ``tolerance`` and
    ``verdict`` (``ok``, ``outside tolerance``, ``missing`` or ``new``)."""
    before, after = _flat(baseline), _flat(current)
    rows = []
    for metric in list(before) + [m for m in after if m not in before]:
        allowed, kind = tolerance(metric)
        old, new = before.get(metric), after.get(metric)
        if old is None or new is None:
            verdict, delta = ("new" if old is None else "missing"), None
        else:
            delta = new - old
            limit = allowed * abs(old) if kind == "relative" else allowed
            verdict = "ok" if abs(delta) <= limit + 1e-12 else "outside tolerance"
        rows.append({"metric": metric, "baseline": old, "now": new, "delta": delta,
                     "tolerance": f"±{allowed:g}" + (" (relative)" if kind == "relative" else ""),
                     "verdict": verdict})
    return pd.DataFrame(rows)


def failed(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that fail the gate."""
    return table[table.verdict.isin(["outside tolerance", "missing"])]


def run_suite(out: str | Path, *, progress: bool = False) -> dict[tuple[str, str, str], cards.Card]:
    """Run :data:`SUITE` with the ``ci`` preset into ``out``; its cards."""
    results = {}
    for defense, attacks in SUITE:
        cfg = config.resolve(PRESET, defense=defense, attacks=attacks)
        result = runner.run(cfg, out=out, progress=progress, secret=SECRET)
        results[(result.card.task, defense, PRESET)] = result.card
    return results


def update(baseline: str | Path, suite_out: str | Path) -> list[Path]:
    """Replace the baseline cards with the suite's (one ``<task>/<defense>/card.json`` each)."""
    written = []
    for key, card in load_cards(suite_out).items():
        target = Path(baseline) / key[0] / key[1] / cards.CARD
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrivbenchError(f"cannot write the baseline {target}: {exc.strerror or exc}") from None
        cards.write(target, card)
        written.append(target)
    return written


@dataclass
class Report:
    """The gate's table, its Markdown and whether it passed."""

    table: pd.DataFrame
    markdown: str
    passed: bool


def report(table: pd.DataFrame, seconds: float | None = None) -> Report:
    """The table as Markdown, failures first, with the verdict in the heading."""
    bad = failed(table)
    ordered = pd.concat([bad, table.drop(bad.index)])
    from privbench.leaderboard import to_markdown

    head = ("regression gate: **passed**" if bad.empty else
            f"regression gate: **failed**, {len(bad)} number(s) outside tolerance or missing: "
            + ", ".join(bad.metric.tolist()[:5]) + (" ..." if len(bad) > 5 else ""))
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    return Report(table, f"### {head}{took}\n\n{to_markdown(ordered)}", bad.empty)


def write_report(rep: Report, path: str | Path | None) -> None:
    """Write the Markdown to ``path`` and append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    if path:
        cards.write_text_atomic(Path(path), rep.markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(rep.markdown + "\n")
