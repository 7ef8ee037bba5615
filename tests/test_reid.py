import json

import pytest
import torch
from typer.testing import CliRunner

from privbench import config, runner
from privbench.attacks import reid
from privbench.attacks.base import Attack, Client, execute
from privbench.cli import app
from privbench.defenses.mixup import MixupPrivacy
from privbench.defenses.none import NoProxy
from privbench.leaderboard import collect
from privbench.registry import create_task

COHORT = {"task.n_subjects": 12, "task.test_fraction": 0.5, "task.max_test_scans": 0}


@pytest.fixture(scope="module")
def cohort(cache_dir):
    """Six test subjects with 2-3 scans each (4 mm), and an untrained mixup client for them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", COHORT, defense="mixup", attacks=("reid",))
        task = create_task(cfg.task.name, cfg=cfg)
    torch.manual_seed(0)
    mixup = MixupPrivacy()
    mixup.setup(task, cfg, torch.device("cpu"))
    return cfg, task, mixup


def test_unprotected_scans_are_re_identified_and_mixup_lowers_it(cohort, tmp_path):
    cfg, task, mixup = cohort
    assert len(task.subjects("test")) == 6 and len(task.scans("test")) >= 12
    attack = reid.Reidentification()
    plain = execute(attack, NoProxy(), task, cfg, run_dir=tmp_path)
    assert plain.metrics["map"] >= 0.9 and plain.metrics["top1"] >= 0.9
    assert plain.metrics["chance"] == pytest.approx(1 / 6, abs=0.1)
    mixed = execute(attack, mixup, task, cfg, run_dir=tmp_path)
    assert mixed.metrics["map"] < plain.metrics["map"] - 0.1
    raw_row = mixed.table[1]
    assert raw_row["guess"] == "attack on the unprotected scans" and raw_row["map"] == plain.metrics["map"]
    assert (tmp_path / reid.HEATMAP).read_bytes()[:4] == b"\x89PNG"


def test_the_attacker_sees_only_the_requests(cohort, tmp_path, monkeypatch):
    cfg, task, mixup = cohort
    seen = []
    real = reid.similarity
    monkeypatch.setattr(reid, "similarity", lambda views: seen.append(views) or real(views))
    execute(reid.Reidentification(), mixup, task, cfg, run_dir=tmp_path, secret=12345)
    attacked, calibration = seen  # the attack, then the harness's raw-scan baseline
    sent = Client(mixup, task, cfg, 12345, ("reid",)).send_test_scans().requests
    assert len(attacked) == len(sent)
    order = [next(i for i, proxy in enumerate(sent) if torch.equal(view, proxy)) for view in attacked]
    assert sorted(order) == list(range(len(sent)))  # every request, each once ...
    assert order != list(range(len(sent)))  # ... but not in the order the client sent them


def test_observing_outputs_compares_class_probabilities(cohort, tmp_path):
    cfg, task, mixup = cohort
    out_cfg = config.resolve("test", {**COHORT, "attack.reid.observe": "output"}, defense="mixup")
    result = execute(reid.Reidentification(), mixup, task, out_cfg, run_dir=tmp_path)
    assert result.label == "reid-output" and 0 <= result.metrics["map"] <= 1
    sims = reid.similarity([torch.rand(1, 4, 20, 20, 20) for _ in range(3)])
    assert sims.shape == (3, 3) and torch.allclose(sims.diagonal(), torch.ones(3), atol=1e-5)


def test_reid_end_to_end_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["run", "--preset", "test", "--defense", "none", "--attack", "reid",
                                      "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    (card_path,) = tmp_path.glob("mni-tissue/none/*/card.json")
    (entry,) = json.loads(card_path.read_text())["attacks"]
    low_fpr = {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "tpr_at_0_fpr"}
    assert entry["status"] == "done" and set(entry["metrics"]) == {"top1", "f1", "map", "chance"} | low_fpr
    assert entry["seconds"] > 0 and all((card_path.parent / f).exists() for f in entry["files"].values())
    # the test preset's two requests are of one subject: no non-match, so no ROC (None, not a number)
    assert entry["settings"]["roc_pairs"] == {"n_positive": 2, "n_negative": 0}
    assert all(entry["metrics"][k] is None for k in low_fpr)
    row = collect(tmp_path).table.iloc[0]
    assert row["attack"] == "reid" and row["reid_map"] == entry["metrics"]["map"]
    bad = CliRunner().invoke(app, ["run", "--preset", "test", "--attack", "reidd", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "did you mean 'reid'" in bad.output


def test_an_attack_that_does_not_apply_is_recorded_not_run(cohort, tmp_path, monkeypatch):
    cfg, task, _ = cohort

    class MixupOnly(Attack):
        name, applies_to, observes = "mixup-only", ("mixup",), "mixtures"

        def reconstruct(self, observation):
            raise AssertionError("a non-applicable attack must not run")

        score = reconstruct

    entry = runner.run_attack(MixupOnly(), NoProxy(), task, config.resolve("test"), run_dir=tmp_path)
    assert entry["status"] == "not applicable" and "applies to mixup, not none" in entry["reason"]
