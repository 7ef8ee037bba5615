"""Leaderboards from cards of schema version 2 and of version 1 (such as those behind leaderboard/)."""

import json

import pytest

from privbench import card as cards
from privbench import leaderboard


def v2_card(run_id="20261201-000000-0123456789ab", defense="mixup", seed=0):
    return cards.Card(
        run_id=run_id, task="mni-tissue", defense=defense, preset="quick", seed=seed,
        config_hash="0123456789ab", config={"seed": seed},
        timings={"train_seconds": 10.0, "train_it_per_s": 2.0, "infer_seconds_per_volume": 1.5},
        utility=[{"variant": "learned", "n_scans": 2, "dice": {"GM": 0.8, "WM": 0.6, "mean": 0.7}}],
        attacks=[{"attack": "reid", "status": "done", "label": "reid", "granted": ["requests"],
                  "metrics": {"f1": 0.25, "map": 0.5}, "table": [], "settings": {}, "files": {}},
                 {"attack": "bss", "status": "not applicable", "reason": "bss applies to mixup, not none"}],
        files={"checkpoint": "checkpoint.pt"}, sections={"test_retest": {"naive": {}}},
        summary=["reference TTA with K=4: 1.00 s/volume"])


def as_v1(data):
    """The same card as version 1 wrote it: no summary, no grants, no python/platform fields."""
    old = {k: v for k, v in data.items() if k not in ("summary", "python", "platform")}
    old["attacks"] = [{k: v for k, v in e.items() if k != "granted"} for e in data["attacks"]]
    return old | {"card_version": 1}


def test_a_card_round_trips_with_the_defense_s_sections_at_the_top(tmp_path):
    card = v2_card()
    cards.write(tmp_path / "card.json", card)
    data = json.loads((tmp_path / "card.json").read_text())
    assert data["card_version"] == 2 and data["test_retest"] == {"naive": {}} and "sections" not in data
    assert cards.load(tmp_path / "card.json") == card
    with pytest.raises(ValueError, match="may not be named"):
        cards.Card(**{**card.__dict__, "sections": {"seed": 1}}).to_json()


def test_the_leaderboard_reads_version_1_and_version_2_cards_alike(tmp_path):
    new = v2_card(seed=0)
    old = v2_card(run_id="20261130-000000-0123456789ab", seed=1)
    (tmp_path / "a").mkdir()
    cards.write(tmp_path / "a" / "card.json", new)
    (tmp_path / "b").mkdir()
    cards.write_json_atomic(tmp_path / "b" / "card.json", as_v1(old.to_json()))
    board = leaderboard.collect(tmp_path)
    assert not board.unreadable and len(board.table) == 2
    rows = board.table.set_index("seed")
    for seed in (0, 1):
        assert rows.loc[seed, "dice_mean"] == 0.7 and rows.loc[seed, "reid_f1"] == 0.25
        assert rows.loc[seed, "attack"] == "reid" and rows.loc[seed, "train_it_per_s"] == 2.0
    v1 = cards.load(tmp_path / "b" / "card.json")
    assert v1.card_version == 1 and v1.summary == [] and v1.sections == {"test_retest": {"naive": {}}}


def test_a_card_missing_a_required_field_is_reported_not_fatal(tmp_path):
    data = v2_card().to_json()
    del data["utility"]
    (tmp_path / "x").mkdir()
    cards.write_json_atomic(tmp_path / "x" / "card.json", data)
    board = leaderboard.collect(tmp_path)
    assert board.table.empty and "missing 'utility'" in board.unreadable[0][1]
