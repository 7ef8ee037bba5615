"""The victims' keys come from a client secret the attacker cannot redraw from anything public,
and a recorded secret replays a finished attack exactly."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from privbench import streams, truth
from privbench.attacks import reid
from privbench.attacks.base import Client, execute
from privbench.cli import app
from privbench.errors import PrivbenchError


def _requests_seen(monkeypatch, cfg, task, defense, tmp_path, secret):
    seen = []
    real = reid.similarity
    monkeypatch.setattr(reid, "similarity", lambda views: seen.append(views) or real(views))
    execute(reid.Reidentification(), defense, task, cfg, run_dir=tmp_path, secret=secret)
    return seen[0]


def test_the_keys_come_from_the_secret_not_from_the_run_seed(mixup_client, tmp_path, monkeypatch):
    """An attacker who knows the run seed (0 here, as on the leaderboard) and how privbench
    derives its streams redraws nothing: neither the requests it sees nor their order."""
    cfg, task, defense = mixup_client
    fresh = _requests_seen(monkeypatch, cfg, task, defense, tmp_path, None)
    again = _requests_seen(monkeypatch, cfg, task, defense, tmp_path, None)
    from_seed = Client(defense, task, cfg, cfg.seed, ("reid",)).send_test_scans().requests  # the old derivation
    assert not any(torch.equal(view, guess) for view in fresh for guess in from_seed)
    assert not all(torch.equal(a, b) for a, b in zip(fresh, again))  # every run, a new secret
    fixed = [_requests_seen(monkeypatch, cfg, task, defense, tmp_path, 99) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*fixed))  # one secret, the same keys and order


def test_a_secret_is_256_bits_of_os_entropy():
    secrets = {streams.client_secret() for _ in range(4)}
    assert len(secrets) == 4 and all(0 <= s < 2**256 for s in secrets) and max(secrets) > 2**200


def test_a_recorded_secret_replays_the_attack_exactly(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run("mixup").run_dir, run_dir)
    card = json.loads((run_dir / "card.json").read_text())
    recorded = json.loads((run_dir / truth.TRUTH).read_text())["secrets"]
    assert {"reid", "linkage"} <= set(recorded) and len(set(recorded.values())) == 1  # one secret per run
    assert truth.STUDY not in recorded  # no a-curve in the test preset: nothing drew from it
    assert str(card["seed"]) not in recorded.values()
    (before,) = [e["metrics"] for e in card["attacks"] if e["attack"] == "linkage"]

    result = CliRunner().invoke(app, ["attack", str(run_dir), "-a", "linkage", "--replay", "-q"])
    assert result.exit_code == 0, result.output
    (after,) = [e["metrics"] for e in json.loads((run_dir / "card.json").read_text())["attacks"]
                if e["attack"] == "linkage"]
    assert after == before  # the same keys, the same numbers
    assert json.loads((run_dir / truth.TRUTH).read_text())["secrets"]["linkage"] == recorded["linkage"]

    result = CliRunner().invoke(app, ["attack", str(run_dir), "-a", "linkage", "-q"])  # a fresh secret
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / truth.TRUTH).read_text())["secrets"]["linkage"] != recorded["linkage"]


@pytest.mark.parametrize("content, message", [
    ("not json", "unreadable truth record"),
    ('{"secrets": {"reid": "12"}}', "is not a truth record"),
    ('{"secrets": []}', "is not a truth record"),
])
def test_a_damaged_truth_record_is_one_clear_error(tmp_path, content, message):
    (tmp_path / truth.TRUTH).write_text(content)
    with pytest.raises(PrivbenchError, match=message):
        truth.recorded(tmp_path, "reid")


def test_replaying_an_attack_never_run_says_so(tmp_path):
    truth.record(tmp_path, {"reid": 5})
    assert truth.recorded(tmp_path, "reid") == 5
    with pytest.raises(PrivbenchError, match="no recorded client secret for 'linkage'.*without --replay first"):
        truth.recorded(tmp_path, "linkage")


def test_an_attacker_at_another_budget_sees_the_runs_own_victims(tmp_path):
    from privbench.runner import _secret_for

    truth.record(tmp_path, {"bss": 11})
    assert _secret_for(tmp_path, "bss", "bss@iterations=30", replay=False) == 11  # the same requests
    assert _secret_for(tmp_path, "bss", "bss", replay=False) not in (11, None)  # a plain rerun: fresh keys
    assert _secret_for(tmp_path, "linkage", "linkage@x=1", replay=False) != 11
