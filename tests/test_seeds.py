"""seeds: runs that differ only in seed, summarised as mean, std, n and a 95% confidence interval."""

import math

import pandas as pd
import pytest
from scipy import stats

from privbench import card as cards
from privbench import config, leaderboard, seeds

from test_leaderboard import v2_card


def test_the_interval_is_student_t_on_the_sample_std():
    out = seeds.interval([0.70, 0.80, 0.90])
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.8) and out["std"] == pytest.approx(0.1)
    assert out["ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.3027
    one = seeds.interval([0.5, float("nan"), None])  # only finite values count
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    assert seeds.interval([])["n"] == 0


def test_the_setting_is_the_config_hash_without_the_seed():
    a = config.to_dict(config.resolve("quick", seed=0))
    b = config.to_dict(config.resolve("quick", seed=7))
    c = config.to_dict(config.resolve("quick", ["train.lr=0.01"], seed=0))
    assert seeds.setting(a) == seeds.setting(b) != seeds.setting(c)
    assert seeds.setting({"seed": 1, "odd": 2}) == seeds.setting({"seed": 2, "odd": 2}) != seeds.setting({"odd": 3})


def test_a_seeds_run_joins_its_group_whichever_attacks_it_holds():
    """Attacks train nothing and change no Dice: the list of attacks run is set aside, the
    attacks' own settings are not."""
    plain = config.to_dict(config.resolve("quick", defense="mixup", seed=0))
    attacked = config.to_dict(config.resolve("quick", defense="mixup", seed=1, attacks=("reid", "bss")))
    observing = config.to_dict(config.resolve("quick", ["attack.reid.observe=output"], defense="mixup", seed=2))
    assert seeds.setting(plain) == seeds.setting(attacked) != seeds.setting(observing)
    assert seeds.setting({"seed": 1, "attacks": ["reid"], "odd": 2}) == seeds.setting({"seed": 2, "odd": 2})


def test_the_worst_case_is_averaged_over_the_runs_that_hold_every_attack():
    """A seed attacked only by reid must not pull the group's worst case down to reid's number."""
    same = {"task": "mni-tissue", "defense": "mixup", "variant": "learned", "preset": "quick", "setting": "s"}
    table = pd.DataFrame([{**same, "seed": 0, "attack": "reid,linkage", "reid_top1": 0.5, "worst_identity_top1": 0.9},
                          {**same, "seed": 1, "attack": "reid", "reid_top1": 0.3, "worst_identity_top1": 0.3},
                          {**same, "seed": 2, "attack": "linkage,reid", "reid_top1": 0.4, "worst_identity_top1": 0.8}])
    (row,) = [r for _, r in seeds.summarise(table).iterrows()]
    assert row["attack"] == "reid,linkage" and row["runs"] == 3 and row["seeds"] == "0,1,2"
    assert row["reid_top1_n"] == 3 and row["reid_top1_mean"] == pytest.approx(0.4)
    assert row["worst_identity_top1_n"] == 2 and row["worst_identity_top1_mean"] == pytest.approx(0.85)


def _card(seed, dice, f1, lr=1e-3, defense="mixup"):
    card = v2_card(run_id=f"20261201-00000{seed}-0123456789ab", defense=defense, seed=seed)
    card.config = config.to_dict(config.resolve("quick", [f"train.lr={lr}"], defense=defense, seed=seed))
    card.utility[0]["dice"] = {"GM": dice, "mean": dice}
    card.attacks[0]["metrics"] = {} if f1 is None else {"f1": f1}
    return card


def test_the_leaderboard_summarises_runs_that_differ_only_in_seed(tmp_path):
    made = [_card(0, 0.70, 0.2), _card(1, 0.80, 0.4), _card(2, 0.90, None),  # one setting, 3 seeds
            _card(3, 0.50, 0.1, lr=1e-2),  # another setting: its own group of one
            _card(4, 0.60, 0.3, defense="none")]
    for card in made:
        (tmp_path / card.run_id).mkdir()
        cards.write(tmp_path / card.run_id / "card.json", card)
    board = leaderboard.collect(tmp_path)
    summary = board.seeds.set_index(["defense", "runs"])
    three = summary.loc[("mixup", 3)]
    assert three["seeds"] == "0,1,2" and three["dice_mean_n"] == 3
    assert three["dice_mean_mean"] == pytest.approx(0.8) and three["dice_mean_std"] == pytest.approx(0.1)
    assert three["dice_mean_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert three["reid_f1_n"] == 2 and three["reid_f1_mean"] == pytest.approx(0.3)  # the run without it is not counted
    assert len(board.seeds) == 3 and "seed_mean" not in board.seeds.columns
    assert three["attack"] == "reid"  # every attack any run of the group holds
    leaderboard.write(board, tmp_path / "board.csv")
    text = (tmp_path / "board.md").read_text()
    assert "### Over seeds" in text and "0.800 ± 0.248" in text and "0.300 ± 1.271 (n=2)" in text
    assert "0.500 (n=1)" in text  # one run: a mean and its n, no interval
    written = pd.read_csv(tmp_path / "board-seeds.csv")
    assert len(written) == 3 and "train_seconds_mean" not in written.columns  # timings stay in the table


def test_a_setting_names_what_it_changes_from_the_defaults():
    def changed(defense, *items):
        return seeds.changes(config.to_dict(config.resolve("quick", list(items), defense=defense, seed=2,
                                                           attacks=("reid",))))

    assert changed("privacy-net") == ""  # seed and attacks are not a change of setting
    assert changed("privacy-net", "adversary.weight=3", "attack.reid.observe=output") == "adversary.weight=3.0"
    assert changed("deformation", "deformation.displacement_mm=2", "train.iterations=3000") == \
        "deformation.displacement_mm=2.0 train.iterations=3000"
    assert changed("none", "mixup.tta=2") == ""  # another defense's section
    assert seeds.changes({"defense": "gone-plugin"}) is None
