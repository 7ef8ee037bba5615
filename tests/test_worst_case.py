"""The worst case per defense: the strongest identity and recovery attack, per card and per defense."""

import json

import pandas as pd
import pytest

from privbench import card as cards
from privbench import leaderboard, worst_case
from privbench.attacks.base import AttackResult, card_entry
from privbench.attacks.bss import BssConfig
from privbench.registry import create_attack


def entry(label, identity="", recovery="", naive=None, **metrics):
    return {"attack": label, "label": label, "status": "done", "metrics": metrics,
            "measures": {"identity": identity, "recovery": recovery, "naive": naive or {}}}


NOT_RUN = {"attack": "bss", "status": "not applicable", "reason": "bss applies to mixup, not none"}

CASES = {  # attacks of one card -> its worst case
    "highest top-1 wins": (
        [entry("reid", "top1", top1=0.4, tpr_at_1pct_fpr=0.3), entry("linkage", "top1", top1=0.9, tpr_at_1pct_fpr=0.1)],
        {"identity": {"attack": "linkage", "top1": 0.9, "tpr_at_1pct_fpr": 0.1}}),
    "a tie goes to the higher TPR at 1% FPR": (
        [entry("reid", "top1", top1=0.5, tpr_at_1pct_fpr=0.3), entry("linkage", "top1", top1=0.5, tpr_at_1pct_fpr=0.2)],
        {"identity": {"attack": "reid", "top1": 0.5, "tpr_at_1pct_fpr": 0.3}}),
    "recovery and identity are separate kinds": (
        [entry("bss", recovery="msssim", msssim=0.6),
         entry("tta-average", "linkage_top1", "msssim", msssim=0.87, linkage_top1=0.95), NOT_RUN],
        {"identity": {"attack": "tta-average", "top1": 0.95, "tpr_at_1pct_fpr": None},
         "recovery": {"attack": "tta-average", "msssim": 0.87}}),
    "no ROC (None) still ranks by top-1": (
        [entry("reid", "top1", top1=1.0, tpr_at_1pct_fpr=None)],
        {"identity": {"attack": "reid", "top1": 1.0, "tpr_at_1pct_fpr": None}}),
    "nothing finished, nothing named": ([NOT_RUN], {}),
    "the mixture taken as the image beats a weaker recovery": (
        [entry("bss", recovery="msssim", naive={"recovery": {"mixture as guess": "mixture_msssim"}},
               msssim=0.645, mixture_msssim=0.825)],
        {"recovery": {"attack": "bss: mixture as guess", "msssim": 0.825}}),
    "a recovery that beats the mixture is named itself": (
        [entry("separation", "linkage_top1", "msssim", naive={"recovery": {"mixture as guess": "mixture_msssim"},
                                                             "identity": {"mixture as guess": "mixture_linkage_top1"}},
               msssim=0.9, mixture_msssim=0.825, linkage_top1=0.5, mixture_linkage_top1=0.7)],
        {"identity": {"attack": "separation: mixture as guess", "top1": 0.7, "tpr_at_1pct_fpr": None},
         "recovery": {"attack": "separation", "msssim": 0.9}}),
}


@pytest.mark.parametrize("attacks, expected", CASES.values(), ids=CASES.keys())
def test_worst_case_of_a_card(attacks, expected):
    assert worst_case.worst_case(attacks) == expected


def test_entries_without_measures_use_the_registered_attack():
    old = [{"attack": "tta-average", "label": "tta-average", "status": "done",
            "metrics": {"msssim": 0.8, "linkage_top1": 0.7}}]  # as cards before this field were written
    assert worst_case.worst_case(old)["recovery"] == {"attack": "tta-average", "msssim": 0.8}
    assert worst_case.measures({"attack": "someone-else's", "status": "done"}) == {}


def test_a_card_whose_bss_recovers_less_than_the_mixture_names_the_mixture(tmp_path):
    """The card of ``privbench run --defense mixup --attack bss`` as it is written: bss below the
    mixture-as-guess row (0.645 against 0.825) gives the mixture as the worst-case recovery, in
    the card, in what the CLI prints, and in the leaderboard's worst case."""
    bss = create_attack("bss")
    table = [{"guess": "bss (Langevin separation)", "msssim_mean": 0.645}, {"guess": "mixture as guess", "msssim_mean": 0.825}]
    result = AttackResult({"msssim": 0.645, "mixture_msssim": 0.825, "template_msssim": 0.645, "oracle_msssim": 0.99},
                          "bss", table, {}, {})
    made = card("20261201-000000-dddddddddddd", "mixup", 0, [card_entry(bss, "mixup", result, BssConfig())])
    cards.write(tmp_path / "card.json", made)
    expected = {"attack": "bss: mixture as guess", "msssim": 0.825}
    assert json.loads((tmp_path / "card.json").read_text())["worst_case"] == {"recovery": expected}
    worst = leaderboard.collect(tmp_path).worst.iloc[0]
    assert (worst.worst_recovery, worst.worst_recovery_msssim) == ("bss: mixture as guess", 0.825)
    older = made.attacks[0] | {"measures": {"identity": "", "recovery": "msssim"}}  # a card before naive guesses
    assert worst_case.worst_case([older])["recovery"] == expected


def test_every_registered_attack_records_what_it_measures():
    for name, kinds in {"reid": ("top1", ""), "linkage": ("top1", ""), "bss": ("", "msssim"),
                        "tta-average": ("linkage_top1", "msssim")}.items():
        attack = create_attack(name)
        assert (attack.identifies, attack.recovers) == kinds
        assert card_entry(attack, "mixup", None).get("measures") is None  # not applicable: nothing measured


def card(run_id, defense, seed, attacks):
    return cards.Card(run_id=run_id, task="mni-tissue", defense=defense, preset="quick", seed=seed,
                      config_hash=run_id[-12:], config={"seed": seed}, timings={},
                      utility=[{"variant": "default", "n_scans": 2, "dice": {"mean": 0.7}}],
                      attacks=attacks, files={})


def test_the_card_names_its_worst_case_and_the_leaderboard_names_each_defense_s(tmp_path):
    runs = {"a": card("20261201-000000-aaaaaaaaaaaa", "mixup", 0,
                      [entry("reid", "top1", top1=0.4, tpr_at_1pct_fpr=0.2), entry("bss", recovery="msssim", msssim=0.6)]),
            "b": card("20261201-000000-bbbbbbbbbbbb", "mixup", 1,
                      [entry("linkage", "top1", top1=0.85, tpr_at_1pct_fpr=0.5)]),
            "c": card("20261201-000000-cccccccccccc", "none", 0, [entry("reid", "top1", top1=1.0, tpr_at_1pct_fpr=1.0)])}
    for folder, made in runs.items():
        (tmp_path / folder).mkdir()
        cards.write(tmp_path / folder / "card.json", made)
    written = json.loads((tmp_path / "a" / "card.json").read_text())["worst_case"]
    assert written == {"identity": {"attack": "reid", "top1": 0.4, "tpr_at_1pct_fpr": 0.2},
                       "recovery": {"attack": "bss", "msssim": 0.6}}
    board = leaderboard.collect(tmp_path)
    worst = board.worst.set_index("defense")
    assert worst.loc["mixup", "worst_identity"] == "linkage" and worst.loc["mixup", "worst_identity_top1"] == 0.85
    assert worst.loc["mixup", "worst_recovery"] == "bss" and worst.loc["mixup", "worst_recovery_msssim"] == 0.6
    assert worst.loc["none", "worst_identity_tpr_at_1pct_fpr"] == 1.0 and pd.isna(worst.loc["none", "worst_recovery"])
    leaderboard.write(board, tmp_path / "board.csv")
    assert "### Worst case per defense" in (tmp_path / "board.md").read_text()
    again = pd.read_csv(tmp_path / "board-worst-case.csv")
    assert list(again.defense) == ["mixup", "none"] and list(again.worst_identity_top1) == [0.85, 1.0]
