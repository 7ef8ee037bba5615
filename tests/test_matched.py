"""matched: each defense's best Dice at the paper's privacy level and at fixed worst cases."""

import pandas as pd

from privbench import matched


def point(defense, dice, f1, top1, changes="", runs=3, collapsed="0/3", variant="default", ci=0.01):
    return {"task": "mni-tissue", "preset": "quick", "defense": defense, "variant": variant, "changes": changes,
            "runs": runs, "collapsed": collapsed, "dice_mean_mean": dice, "dice_mean_ci95": ci,
            "reid_f1_mean": f1, "worst_identity_top1_mean": top1}


SUMMARY = pd.DataFrame([
    point("none", 0.83, 1.00, 1.00),
    point("privacy-net", 0.70, 0.90, 0.95, "adversary.weight=1.0"),
    point("privacy-net", 0.55, 0.08, 0.45, "adversary.weight=10.0"),  # under the paper's 0.092
    point("privacy-net", 0.60, 0.20, 0.20, "adversary.weight=3.0"),
    point("deformation", 0.82, 0.05, 0.05, "deformation.displacement_mm=0.0", collapsed="2/3"),  # not honest
    point("deformation", 0.79, 0.60, 0.70, "deformation.displacement_mm=4.0"),
    point("mixup", 0.65, 0.45, 0.90),
])


def test_each_defense_gets_its_best_dice_at_each_privacy_level():
    rows = matched.table(SUMMARY).set_index("defense")
    assert list(rows.index) == ["deformation", "mixup", "none", "privacy-net"]
    net = rows.loc["privacy-net"]
    assert net.points == 3
    assert net["reid_f1 <= paper"] == "(paper 0.092) 0.550 ± 0.010 (n=3; default, adversary.weight=10.0)"
    assert net["top-1 <= 0.5"] == "0.600 ± 0.010 (n=3; default, adversary.weight=3.0)"  # beats 0.55 at 0.45
    assert net["top-1 <= 0.25"] == "0.600 ± 0.010 (n=3; default, adversary.weight=3.0)"
    assert net["top-1 at Dice >= none - 0.05"] == "not reached"  # its best Dice is 0.70 < 0.78


def test_a_collapsed_point_is_never_an_operating_point():
    deformation = matched.table(SUMMARY).set_index("defense").loc["deformation"]
    assert deformation.points == 1  # the collapsed setting is left out
    assert deformation["reid_f1 <= paper"] == "(paper 0.122) not reached"
    assert deformation["top-1 <= 0.5"] == "not reached"
    assert deformation["top-1 at Dice >= none - 0.05"] == "0.700 at Dice 0.790 ± 0.010 (n=3; default, deformation.displacement_mm=4.0)"


def test_without_a_privacy_column_there_is_no_table():
    assert matched.table(SUMMARY.drop(columns=["reid_f1_mean", "worst_identity_top1_mean"])).empty
    assert matched.table(pd.DataFrame()).empty


def test_without_a_none_run_the_dice_margin_says_so():
    rows = matched.table(SUMMARY[SUMMARY.defense != "none"]).set_index("defense")
    assert set(rows["top-1 at Dice >= none - 0.05"]) == {"no none run"}
