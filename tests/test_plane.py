"""plane: utility against the worst-case attacker, over seeds, with the Pareto front."""

import pandas as pd
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
