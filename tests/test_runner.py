"""runner: a run's life as library calls (the CLI is a thin layer over these)."""

import json
import shutil

import pytest

from privbench import config, runner
from privbench.attacks.base import Attack, AttackResult
from privbench.card import CARD
from privbench.defenses.none import NoProxy
from privbench.errors import NonFiniteError, PrivbenchError
from privbench.registry import UnknownNameError


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared trained ``none`` run of the test preset."""
    source = trained_run("none").run_dir
    copy = tmp_path / "runs" / "mni-tissue" / "none" / source.name
    shutil.copytree(source, copy)
    return copy


def test_adding_an_attack_replaces_its_entry_and_keeps_the_others(run_copy):
    before = json.loads((run_copy / CARD).read_text())
    result = runner.attack(run_copy, ["reid"], progress=False)
    names = [entry["attack"] for entry in result.card.attacks]
    assert names.count("reid") == 1 and sorted(names) == sorted(e["attack"] for e in before["attacks"])
    reid = next(e for e in result.card.attacks if e["attack"] == "reid")
    assert "added_later" in reid and reid["seconds"] > 0
    others = [e for e in before["attacks"] if e["attack"] != "reid"]
    assert [e for e in json.loads((run_copy / CARD).read_text())["attacks"] if e["attack"] != "reid"] == others
    assert result.card.utility == before["utility"]  # the defense is restored, not retrained


def test_an_unknown_attack_leaves_the_card_untouched(run_copy):
    card = (run_copy / CARD).read_bytes()
    with pytest.raises(UnknownNameError, match="reidd"):
        runner.attack(run_copy, ["linkage", "reidd"], progress=False)
    assert (run_copy / CARD).read_bytes() == card


def test_nothing_to_resume_is_an_error_before_any_folder_exists(tmp_path):
    with pytest.raises(PrivbenchError, match="nothing to resume"):
        runner.run(config.resolve("test"), out=tmp_path / "runs", resume=True, progress=False)
    assert not (tmp_path / "runs").exists()


class _NaNAttack(Attack):
    name = "nan-attack"

    def reconstruct(self, observation):
        return None

    def score(self, guesses, truth, observation, run_dir):
        return AttackResult({"top1": float("nan")})


def test_an_attack_that_scores_nan_stops_with_its_name(tmp_path):
    cfg = config.resolve("test")
    from privbench.registry import create_task

    task = create_task(cfg.task.name, cfg=cfg)
    with pytest.raises(NonFiniteError, match="attack nan-attack"):
        runner.run_attack(_NaNAttack(), NoProxy(), task, cfg, run_dir=tmp_path, progress=False)


def test_a_not_applicable_attack_is_recorded_with_its_reason(tmp_path):
    cfg = config.resolve("test")
    from privbench.registry import create_attack, create_task

    entry = runner.run_attack(create_attack("bss"), NoProxy(), create_task(cfg.task.name, cfg=cfg), cfg,
                              run_dir=tmp_path)
    assert entry["status"] == "not applicable" and "mixup" in entry["reason"] and not list(tmp_path.iterdir())
