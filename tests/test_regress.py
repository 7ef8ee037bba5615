"""regress: the regression gate against the baseline cards committed under benchmarks/baselines."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privbench import card as cards
from privbench import regress
from privbench.cli import app

BASELINES = Path(__file__).parents[1] / "benchmarks" / "baselines"


def test_the_committed_baseline_covers_the_suite():
    found = regress.load_cards(BASELINES)
    assert {key[1] for key in found} == {defense for defense, _ in regress.SUITE}
    assert {key[2] for key in found} == {regress.PRESET}
    for card in found.values():  # every attack of the suite is in its card
        attacks = dict(regress.SUITE)[card.defense]
        assert {e["attack"] for e in card.attacks if e["status"] == "done"} == set(attacks)


def test_tolerances_by_kind():
    assert regress.tolerance("mni-tissue/none/ci/default/dice_GM") == (0.05, "absolute")
    assert regress.tolerance("mni-tissue/privacy-net/ci/default/dice_WM") == (0.15, "absolute")
    assert regress.tolerance("mni-tissue/privacy-net/ci/tta-average/msssim") == (0.05, "absolute")
    assert regress.tolerance("mni-tissue/mixup/ci/reid/top1") == (0.25, "absolute")
    assert regress.tolerance("mni-tissue/mixup/ci/speed_train_it_per_s_vs_none") == (1.0, "relative")


def _moved(tmp_path, defense, change):
    copy = tmp_path / "now"
    shutil.copytree(BASELINES, copy)
    path = copy / "mni-tissue" / defense / "card.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return copy


def test_the_gate_passes_on_the_baseline_itself_and_writes_its_report(tmp_path, monkeypatch):
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = CliRunner().invoke(app, ["regress", str(BASELINES), "--cards", str(BASELINES),
                                      "--report", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    assert "regression gate: **passed**" in text and "| metric | baseline | now | delta |" in text
    assert "speed_train_it_per_s_vs_none" in text and summary.read_text().startswith(text.splitlines()[0])


def test_a_moved_number_fails_the_gate_and_is_named(tmp_path):
    def lower_dice(data):
        data["utility"][0]["dice"]["GM"] -= 0.2

    now = _moved(tmp_path, "mixup", lower_dice)
    result = CliRunner().invoke(app, ["regress", str(BASELINES), "--cards", str(now), "--report",
                                      str(tmp_path / "r.md")])
    variant = json.loads((now / "mni-tissue" / "mixup" / "card.json").read_text())["utility"][0]["variant"]
    assert result.exit_code == 1 and "1 failed" in result.output
    report = (tmp_path / "r.md").read_text()
    name = f"mni-tissue/mixup/ci/{variant}/dice_GM"
    assert f"**failed**, 1 number(s) outside tolerance or missing: {name}" in report
    assert f"| {name} |" in report.split("\n")[4] and "outside tolerance" in report.split("\n")[4]  # failures first


def test_a_missing_number_fails_and_a_new_one_is_listed():
    base = regress.load_cards(BASELINES)
    now = {key: cards.Card(**{**card.__dict__}) for key, card in base.items()}
    key = next(k for k in now if k[1] == "none")
    card = now[key]
    card.attacks = [e for e in card.attacks if e.get("attack") != "linkage"]  # the linkage attack is gone
    table = regress.compare(base, now)
    assert set(regress.failed(table).verdict) == {"missing"}
    assert all(m.startswith("mni-tissue/none/ci/linkage/") for m in regress.failed(table).metric)
    assert set(regress.compare(now, base).verdict) == {"ok", "new"}


def test_update_rewrites_the_baseline(tmp_path):
    regress.update(tmp_path / "baselines", BASELINES)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "baselines").rglob("card.json")) == [
        f"baselines/mni-tissue/{d}/card.json" for d in sorted(d for d, _ in regress.SUITE)]


def test_no_baseline_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["regress", str(tmp_path / "none"), "--cards", str(BASELINES)])
    assert result.exit_code == 2 and "no such folder" in result.stderr
    with pytest.raises(Exception, match="no result cards"):
        regress.load_cards(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["utility"][0]["dice"].update(GM="0.8"), "dice GM must be a number, not '0.8'"),
    (lambda d: d["utility"][0].pop("dice"), "needs a 'variant' name and a 'dice' table"),
    (lambda d: d.update(utility="all good"), "'utility' must be a list of variants, not 'all good'"),
])
def test_a_hand_edited_baseline_is_one_clear_error(tmp_path, edit, message):
    broken = _moved(tmp_path, "none", edit)
    result = CliRunner().invoke(app, ["regress", str(broken), "--cards", str(BASELINES)])
    assert result.exit_code == 2 and message in result.stderr and "none/card.json" in result.stderr
    assert "Traceback" not in result.output


def test_update_where_no_folder_can_be_made_is_one_clear_error(tmp_path):
    """A baseline folder that cannot be made (here a file stands in its way: the same OSError
    path as a read-only folder, which root, running the tests, could still write into)."""
    (tmp_path / "blocked").write_text("a file, not a folder")
    result = CliRunner().invoke(app, ["regress", str(tmp_path / "blocked" / "b"), "--cards", str(BASELINES), "--update"])
    assert result.exit_code == 2 and "cannot write the baseline" in result.stderr and "Traceback" not in result.output
