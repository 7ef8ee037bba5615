"""The worst case per defense: "private" means "against the best attacker we have".

Every attack declares what it measures (:attr:`privbench.attacks.base.Attack.identifies`, the
metric of its top-1 identification rate, :attr:`~privbench.attacks.base.Attack.recovers`,
that of its recovery MS-SSIM, and :attr:`~privbench.attacks.base.Attack.naive`, the no-training
guesses it reports beside its own, such as the mixture taken as the image), and its card entry
records it under ``measures``; the naive guesses count as attackers of their own. The strongest
identity attack is the one with the highest top-1 (ties: the higher TPR at 1% FPR, then the
name); the strongest recovery attack the one with the highest MS-SSIM. A card names both for
its run; the leaderboard names them for each defense over all its runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

IDENTITY_COLUMNS = ("worst_identity", "worst_identity_top1", "worst_identity_tpr_at_1pct_fpr")
RECOVERY_COLUMNS = ("worst_recovery", "worst_recovery_msssim")
VERDICT = "encoding"  # a leaderboard row's encoding verdict (privbench.collapse)
COLLAPSED_COLUMN = "collapsed"  # per defense: "k/n" of its runs with a verdict whose requests are the scans


def measures(entry: dict[str, Any]) -> dict[str, Any]:
    """What a card entry's metrics measure: its own record, or for entries written before
    attacks declared it, the registered attack's declaration (nothing for unknown attacks). The
    naive guesses (``naive``) likewise come from the registered attack for entries written
    before they were recorded: their metrics were there already."""
    recorded = entry.get("measures")
    if recorded is not None and "naive" in recorded:
        return recorded
    from privbench.registry import ATTACKS, create_attack  # only for older cards

    if entry.get("attack") not in ATTACKS.names():
        return recorded or {}
    attack = create_attack(entry["attack"])
    return (recorded or {"identity": attack.identifies, "recovery": attack.recovers}) | {"naive": attack.naive}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def worst_case(attacks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The strongest identity and recovery attack among a card's attack entries (a kind with
    no finished attack is left out), the no-training guesses an attack reports beside its own
    (``bss: mixture as guess``) counted as attackers too: the worst case is never weaker than
    taking the request as it is."""
    identity, recovery = [], []
    for entry in attacks:
        if entry.get("status") != "done":
            continue
        measured, metrics, label = measures(entry), entry.get("metrics", {}), entry["label"]
        naive = measured.get("naive") or {}
        identities = [(label, measured.get("identity"), True)] + [
            (f"{label}: {guess}", metric, False) for guess, metric in naive.get("identity", {}).items()]
        for name, metric, own in identities:
            top1 = _number(metrics.get(metric or ""))
            if top1 is not None:
                tpr = _number(metrics.get("tpr_at_1pct_fpr")) if own else None
                identity.append(((top1, -1.0 if tpr is None else tpr), name,
                                 {"attack": name, "top1": top1, "tpr_at_1pct_fpr": tpr}))
        recoveries = [(label, measured.get("recovery"))] + [
            (f"{label}: {guess}", metric) for guess, metric in naive.get("recovery", {}).items()]
        for name, metric in recoveries:
            msssim = _number(metrics.get(metric or ""))
            if msssim is not None:
                recovery.append((msssim, name, {"attack": name, "msssim": msssim}))
    out: dict[str, dict[str, Any]] = {}
    if identity:
        out["identity"] = max(identity, key=lambda item: (item[0], item[1]))[2]
    if recovery:
        out["recovery"] = max(recovery, key=lambda item: (item[0], item[1]))[2]
    return out


def columns(attacks: list[dict[str, Any]]) -> dict[str, Any]:
    """A card's worst case as flat leaderboard columns (None where no attack of the kind ran)."""
    worst = worst_case(attacks)
    identity, recovery = worst.get("identity", {}), worst.get("recovery", {})
    return {"worst_identity": identity.get("attack"), "worst_identity_top1": identity.get("top1"),
            "worst_identity_tpr_at_1pct_fpr": identity.get("tpr_at_1pct_fpr"),
            "worst_recovery": recovery.get("attack"), "worst_recovery_msssim": recovery.get("msssim")}


def per_defense(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, preset, defense) of a leaderboard: its strongest identity attack over
    all its runs (top-1, TPR at 1% FPR), its strongest recovery attack (MS-SSIM), and how many
    of its runs collapsed (``k/n`` over the runs whose card holds a verdict), so a defense whose
    runs send the scans themselves is never read as private."""
    keys = ["task", "preset", "defense"]
    out_columns = keys + list(IDENTITY_COLUMNS + RECOVERY_COLUMNS) + [COLLAPSED_COLUMN]
    if table.empty or not set(IDENTITY_COLUMNS) <= set(table.columns):
        return pd.DataFrame(columns=out_columns)
    rows = []
    for key, group in table.groupby(keys, sort=True):
        row = dict(zip(keys, key)) | {COLLAPSED_COLUMN: collapsed_share(group)}
        ids = group.dropna(subset=["worst_identity_top1"])
        if not ids.empty:
            best = ids.assign(_tpr=ids.worst_identity_tpr_at_1pct_fpr.fillna(-1.0)).sort_values(
                ["worst_identity_top1", "_tpr", "worst_identity"], ascending=False, kind="stable").iloc[0]
            row |= {c: best[c] for c in IDENTITY_COLUMNS}
        rec = group.dropna(subset=["worst_recovery_msssim"])
        if not rec.empty:
            best = rec.sort_values(["worst_recovery_msssim", "worst_recovery"], ascending=False, kind="stable").iloc[0]
            row |= {c: best[c] for c in RECOVERY_COLUMNS}
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=out_columns)


def collapsed_share(rows: pd.DataFrame) -> str | None:
    """``"k/n"``: of the n runs among ``rows`` (one or more rows per run) whose cards hold an
    encoding verdict, k collapsed; None where none holds one."""
    if VERDICT not in rows or "run_id" not in rows:
        return None
    verdicts = rows.dropna(subset=[VERDICT]).drop_duplicates("run_id")[VERDICT]
    return f"{int((verdicts == 'collapsed').sum())}/{len(verdicts)}" if len(verdicts) else None
