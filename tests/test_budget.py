"""budget: Dice against training budget, the gap's power law and its bootstrap interval."""

import math

import numpy as np
import pandas as pd
import pytest

from privbench import budget


def scans(gap_at, budgets=(1000, 3000, 10000), seeds=(0,), n=12, noise=0.0):
    """Per-scan Dice: none at 0.8 everywhere, mixup's learned+tta at 0.8 - gap_at(n) (and
    naive 0.1 lower), each scan offset by its own amount (the same in every run)."""
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, noise, n)
    rows = []
    for iterations in budgets:
        for seed in seeds:
            for variant, dice in (("default", 0.8), ("learned+tta", 0.8 - gap_at(iterations)),
                                  ("naive", 0.7 - gap_at(iterations))):
                defense = "none" if variant == "default" else "mixup"
                rows += [{"task": "t", "preset": "quick", "defense": defense, "variant": variant, "seed": seed,
                          "iterations": iterations, "subject": f"s{i}", "session": "1", "dice": dice + offsets[i]}
                         for i in range(n)]
    return pd.DataFrame(rows)


def test_an_exact_power_law_is_recovered_with_its_budget():
    law = lambda n: 2.0 * n ** -0.5  # noqa: E731  gap 0.063 at 1k, 0.02 at 10k: 0.01 at 40k
    found = budget.fit(scans(law), "mixup", "learned+tta", resamples=50)
    assert found.scale == pytest.approx(2.0) and found.exponent == pytest.approx(0.5)
    assert found.budget == pytest.approx(40_000) and found.extrapolated and found.measured_up_to == 10_000
    assert found.budget_low == pytest.approx(40_000) and found.budget_high == pytest.approx(40_000)  # no noise


def test_a_gap_that_does_not_shrink_is_never_closed_and_the_table_has_the_gaps():
    found = budget.fit(scans(lambda n: 0.2), "mixup", "learned+tta", resamples=20)
    assert found.exponent == pytest.approx(0.0, abs=1e-9) and found.budget == math.inf == found.budget_high
    row = found.row()
    assert row["budget_for_target"] is None and row["closes"] == "never: the fitted gap does not shrink"
    rows = budget.table(scans(lambda n: 0.2)).set_index(["defense", "variant", "iterations"])
    assert rows.loc[("mixup", "learned+tta", 3000), "gap"] == pytest.approx(0.2)
    assert rows.loc[("none", "default", 3000), "gap"] == pytest.approx(0.0)


def test_the_bootstrap_interval_widens_with_the_scans_spread():
    law = lambda n: 2.0 * n ** -0.5  # noqa: E731
    noisy = scans(law, noise=0.05)
    noisy.loc[noisy.defense == "mixup", "dice"] += np.random.default_rng(1).normal(0, 0.03, (noisy.defense == "mixup").sum())
    found = budget.fit(noisy, "mixup", "learned+tta", resamples=200)
    assert found.budget_low < found.budget < found.budget_high


def test_one_budget_is_not_a_curve_and_the_order_of_the_variants_is_checked():
    with pytest.raises(Exception, match="two or more budgets"):
        budget.fit(scans(lambda n: 0.1, budgets=(1000,)), "mixup", "learned+tta")
    order = budget.ordering(scans(lambda n: 0.1), order=("naive", "learned+tta"))
    assert order.as_paper.all() and order.order.iloc[0] == "naive < learned+tta" and set(order.defense) == {"mixup"}
    assert budget.ordering(scans(lambda n: 0.1), order=("learned+tta", "naive")).as_paper.sum() == 0


def test_the_cli_writes_the_budget_study_from_run_folders(tmp_path):
    """Cards and per-scan scores as runs write them, at 1k and 4k iterations: the table, the fit
    (gap 0.2 at 1k, 0.1 at 4k: exponent 0.5, under 0.01 at 400k, extrapolated), the figure."""
    from typer.testing import CliRunner

    from privbench import card as cards
    from privbench.cli import app
    from test_leaderboard import v2_card

    for iterations, gap in ((1000, 0.2), (4000, 0.1)):
        for defense, variant, dice in (("none", "default", 0.8), ("mixup", "learned+tta", 0.8 - gap)):
            run = tmp_path / "runs" / f"{defense}-{iterations}"
            run.mkdir(parents=True)
            card = v2_card(run_id=f"20261201-00000{iterations // 1000}-0123456789ab", defense=defense)
            card.config = {"seed": 0, "train": {"iterations": iterations}}
            card.data = {"classes": ["background", "GM", "WM"]}
            card.files = {"per_scan": "per_scan_dice.csv"}
            cards.write(run / "card.json", card)
            pd.DataFrame([{"variant": variant, "subject": f"s{i}", "session": "1", "GM": dice, "WM": dice}
                          for i in range(4)]).to_csv(run / "per_scan_dice.csv", index=False)
    out = tmp_path / "board" / "budget.csv"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["budget", str(tmp_path / "runs"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mixup/learned+tta" in result.stdout and "extrapolated" in result.stdout
    (row,) = pd.read_csv(out.with_name("budget-fit.csv")).to_dict("records")
    assert row["exponent"] == pytest.approx(0.5) and row["budget_for_target"] == pytest.approx(400_000)
    assert out.with_suffix(".png").stat().st_size > 0 and "Power-law fit" in out.with_suffix(".md").read_text()
    bad = CliRunner().invoke(app, ["budget", str(tmp_path / "runs"), "-o", str(out), "--target", "2"])
    assert bad.exit_code == 2 and "--target must be a gap in (0, 1)" in bad.output
