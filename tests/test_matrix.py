"""Every registered defense against every registered attack, on the ``test`` preset.

The pairs are read from the registries when the module is collected, so a newly registered
defense or attack is covered without editing this file. Each defense is trained once, with all
attacks (the session's ``trained_run``), and its card is shared by that defense's pairs.
"""

import math

import pytest

from privbench.attacks.base import NOT_APPLICABLE
from privbench.registry import create_attack, list_attacks, list_defenses

DEFENSES = list_defenses()
ATTACKS = list_attacks()


@pytest.fixture
def card_of(trained_run):
    """``card_of(defense)``: the card of the session's ``test`` run of ``defense`` with every attack."""
    return lambda defense: trained_run(defense).card


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.parametrize("defense, attack", [(d, a) for d in DEFENSES for a in ATTACKS])
def test_every_defense_against_every_attack(card_of, defense, attack):
    card = card_of(defense)
    assert card.defense == defense and card.preset == "test" and card.card_version == 2
    assert [e["attack"] for e in card.attacks] == list(ATTACKS)  # one entry per attack, in order
    (entry,) = [e for e in card.attacks if e["attack"] == attack]
    attacker = create_attack(attack)
    if not attacker.applies(defense):
        assert entry["status"] == NOT_APPLICABLE
        assert defense in entry["reason"] and "metrics" not in entry
    else:
        assert entry["status"] == "done", entry
        # a number, or None where nothing could be scored (no ROC without non-matching pairs)
        assert entry["metrics"] and all(_is_number(v) or v is None for v in entry["metrics"].values()), entry["metrics"]
        assert _is_number(entry["metrics"][attacker.headline])
        for kind, metric in (("identity", attacker.identifies), ("recovery", attacker.recovers)):
            assert entry["measures"][kind] == metric and (not metric or _is_number(entry["metrics"][metric]))
        assert entry["seconds"] > 0
        assert entry["granted"][:2] == ["requests", "defense's public config"]
    assert card.utility
    for variant in card.utility:
        dice = variant["dice"]
        assert all(_is_number(v) and 0 <= v <= 1 for v in dice.values()), (variant["variant"], dice)
        classes = [v for k, v in dice.items() if k != "mean"]
        assert dice["mean"] == pytest.approx(sum(classes) / len(classes))
        assert variant["n_scans"] == card.data["test_scans"]
