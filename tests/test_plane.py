"""plane: utility against the worst-case attacker, over seeds, with the Pareto front."""

import pandas as pd
import pytest
from PIL import Image

from privbench import card as cards
from privbench import leaderboard, plane

from test_seeds import _card


def _summary(rows):
    return pd.DataFrame([{"task": "t", "preset": "quick", "defense": d, "variant": "default", "runs": n,
                          "dice_mean_mean": dice, "dice_mean_ci95": dice_ci,
                          "worst_identity_top1_mean": attack, "worst_identity_top1_ci95": None}
                         for d, n, dice, dice_ci, attack in rows])


def test_the_front_holds_the_points_nothing_beats_on_both_axes():
    points = plane.points(_summary([("none", 3, 0.82, 0.01, 1.00),  # best Dice: on the front
                                    ("mixup", 3, 0.62, 0.02, 0.40),  # most private: on the front
                                    ("blur", 1, 0.60, None, 0.90),  # beaten by mixup on both
                                    ("deform", 3, 0.80, 0.01, 0.95)]))  # less Dice than none, but more private
    front = dict(zip(points.label, points.pareto))
    assert front == {"none/default": True, "mixup/default": True, "blur/default": False, "deform/default": True}
    assert points.set_index("label").loc["blur/default", "dice_err"] == 0  # one run: no error bar
    assert points.set_index("label").loc["none/default", "attack_err"] == 0  # CI unknown: drawn as 0


def test_points_need_both_a_dice_and_a_worst_case():
    summary = _summary([("none", 1, 0.8, None, None)])
    assert plane.points(summary).empty and plane.points(pd.DataFrame()).empty


def test_the_leaderboard_draws_the_plane_beside_the_csv(tmp_path):
    for card in (_card(0, 0.7, 0.2), _card(1, 0.8, 0.4), _card(2, 0.75, 0.3, defense="none")):
        card.attacks[0]["metrics"]["top1"] = card.attacks[0]["metrics"]["f1"]
        card.attacks[0]["measures"] = {"identity": "top1", "recovery": ""}
        (tmp_path / card.run_id).mkdir()
        cards.write(tmp_path / card.run_id / "card.json", card)
    board = leaderboard.collect(tmp_path)
    (tmp_path / "out").mkdir()
    leaderboard.write(board, tmp_path / "out" / "board.csv")
    image = Image.open(tmp_path / "out" / "board-plane.png")
    assert image.format == "PNG" and image.size[0] > 300
    figure = plane.figure(plane.points(board.seeds))
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert sorted(labels) == ["Pareto front", "mixup/learned (n=2)", "none/learned (n=1)"]


def test_a_worst_case_from_fewer_runs_says_so_in_the_legend():
    summary = _summary([("mixup", 3, 0.65, 0.02, 0.975)]).assign(worst_identity_top1_n=1)
    points = plane.points(summary)
    assert points.attacked.tolist() == [1]
    labels = [t.get_text() for t in plane.figure(points).axes[0].get_legend().get_texts()]
    assert "mixup/default (n=3, worst case n=1)" in labels


def test_a_collapsed_run_is_kept_off_the_front_and_named_everywhere(tmp_path):
    """Deformation runs whose requests were the scans look private to a weak attacker: the
    seeds summary counts them, the worst-case table says so, and the plane draws them as a
    cross off the front, where an honest run would have been on it."""
    for seed, verdict, top1 in ((0, "collapsed", 0.1), (1, "encodes", 0.2), (2, "collapsed", 0.1)):
        card = _card(seed, 0.8, top1, defense="deformation")
        card.attacks[0]["metrics"]["top1"] = top1
        card.attacks[0]["measures"] = {"identity": "top1", "recovery": ""}
        card.sections["encoding"] = {"request_msssim": 0.999 if verdict == "collapsed" else 0.7, "verdict": verdict}
        (tmp_path / card.run_id).mkdir()
        cards.write(tmp_path / card.run_id / "card.json", card)
    board = leaderboard.collect(tmp_path)
    assert sorted(board.table["encoding"]) == ["collapsed", "collapsed", "encodes"]
    (worst,) = board.worst.to_dict("records")
    assert worst["collapsed"] == "2/3"
    (group,) = board.seeds.to_dict("records")
    assert group["collapsed"] == "2/3" and group["request_msssim_mean"] == pytest.approx((0.999 * 2 + 0.7) / 3)
    points = plane.points(board.seeds)
    assert points.collapsed.tolist() == ["2/3"] and not points.pareto.any()
    labels = [t.get_text() for t in plane.figure(points).axes[0].get_legend().get_texts()]
    assert "deformation/learned (n=3, COLLAPSED 2/3)" in labels
