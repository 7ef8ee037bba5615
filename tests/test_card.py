"""privbench.card: JSON writing, reading cards, run folders, resuming and the environment record.

(Refusing an infinite number at the top of a mapping is tested in test_finite.py; unwritable
output folders and --resume without a run in test_cli.py.)
"""

import json
import math
import re
from importlib import metadata

import pytest
import torch

from privbench import card as cards
from privbench.errors import NonFiniteError, PrivbenchError

HASH = "0123456789ab"
STAMP = "20250101-120000"


def test_json_is_written_readably_and_a_nan_deep_in_a_list_names_its_field(tmp_path):
    target = tmp_path / "card.json"
    data = {"card_version": 1, "z": (1, 2.5), "a": {"b": None}}
    cards.write_json_atomic(target, data)
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "z": [\n    1,\n    2.5\n  ],' in text  # indent 2, tuple -> list
    assert list(json.loads(text)) == ["card_version", "z", "a"]  # key order kept, not sorted
    assert cards.read_card(target) == {"card_version": 1, "z": [1, 2.5], "a": {"b": None}}
    fresh = tmp_path / "fresh.json"
    with pytest.raises(NonFiniteError, match=re.escape("attacks[1].metrics.f1 is nan")) as raised:
        cards.write_json_atomic(fresh, {"attacks": [{}, {"metrics": {"top1": 1.0, "f1": math.nan}}]})
    assert str(fresh) in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]  # nothing written, no temporary


@pytest.mark.parametrize("content, message", [
    (None, "unreadable card"),
    ("{half a card", "unreadable card"),
    ("[1, 2]", "is not a privbench card (version 1 or 2)"),
    ('{"card_version": 3}', "is not a privbench card (version 1 or 2)"),
    ('{"task": "mni-tissue"}', "is not a privbench card (version 1 or 2)"),
])
def test_read_card_refuses_what_is_not_a_card(tmp_path, content, message):
    path = tmp_path / "card.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PrivbenchError, match=re.escape(message)) as raised:
        cards.read_card(path)
    assert str(path) in str(raised.value)


def test_new_run_dirs_of_one_second_get_numbered(tmp_path, monkeypatch):
    monkeypatch.setattr(cards.time, "strftime", lambda fmt: STAMP)
    made = [cards.new_run_dir(tmp_path / "runs", "mni-tissue", "none", HASH) for _ in range(3)]
    parent = tmp_path / "runs" / "mni-tissue" / "none"
    assert [p.name for p in made] == [f"{STAMP}-{HASH}", f"{STAMP}-{HASH}-1", f"{STAMP}-{HASH}-2"]
    assert all(p.is_dir() and p.parent == parent and not any(p.iterdir()) for p in made)


def test_new_run_dir_gives_up_after_a_thousand_in_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(cards.time, "strftime", lambda fmt: STAMP)
    parent = tmp_path / "mni-tissue" / "none"
    for n in range(1000):
        (parent / (f"{STAMP}-{HASH}" + (f"-{n}" if n else ""))).mkdir(parents=True)
    with pytest.raises(PrivbenchError, match=f"too many runs named {STAMP}-{HASH} under"):
        cards.new_run_dir(tmp_path, "mni-tissue", "none", HASH)


def test_real_run_dir_name_is_a_timestamp_and_the_hash(tmp_path):
    run_dir = cards.new_run_dir(tmp_path, "mni-tissue", "mixup", HASH)
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{HASH}", run_dir.name)


def _run(parent, name, checkpoint=True, card=False):
    run_dir = parent / name
    run_dir.mkdir(parents=True)
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"x")
    if card:
        (run_dir / cards.CARD).write_text("{}")
    return run_dir


def test_find_resumable_takes_the_newest_unfinished_run_of_the_same_config(tmp_path):
    assert cards.find_resumable(tmp_path, "mni-tissue", "none", HASH) is None  # no folder at all
    parent = tmp_path / "mni-tissue" / "none"
    older = _run(parent, f"20250101-100000-{HASH}")
    _run(parent, f"20250101-110000-{HASH}", card=True)  # finished
    _run(parent, f"20250101-120000-{HASH}", checkpoint=False)  # died before its first checkpoint
    _run(parent, "20250101-130000-ffffffffffff")  # another config
    _run(tmp_path / "mni-tissue" / "mixup", f"20250101-140000-{HASH}")  # another defense
    assert cards.find_resumable(tmp_path, "mni-tissue", "none", HASH) == older
    newer = _run(parent, f"20250102-000000-{HASH}-1")
    assert cards.find_resumable(tmp_path, "mni-tissue", "none", HASH) == newer
    (older / "checkpoint.pt").unlink()
    (newer / cards.CARD).write_text("{}")
    assert cards.find_resumable(tmp_path, "mni-tissue", "none", HASH) is None


def test_find_resumable_orders_numbered_runs_of_one_second_by_number(tmp_path):
    parent = tmp_path / "mni-tissue" / "none"
    runs = [_run(parent, f"{STAMP}-{HASH}" + (f"-{n}" if n else "")) for n in range(11)]
    assert cards.find_resumable(tmp_path, "mni-tissue", "none", HASH) == runs[-1]  # ...-10, made last


def test_environment_records_code_libraries_and_device(monkeypatch):
    from privbench import __version__

    env = cards.environment(torch.device("cpu"))
    assert set(env) == {"code", "libraries", "python", "platform", "device"}
    assert list(env["libraries"]) == list(cards.LIBRARIES)
    assert env["libraries"]["privbench"] == env["code"]["privbench"] == __version__
    assert env["libraries"]["torch"] == metadata.version("torch")
    assert env["device"]["type"] == "cpu" and env["device"]["name"]
    assert env["device"]["torch_threads"] == torch.get_num_threads()
    assert re.fullmatch(r"[0-9a-f]{40}", env["code"]["git_commit"])  # this checkout is a git repository
    assert isinstance(env["code"]["git_dirty"], bool)
    json.dumps(env, allow_nan=False)  # fits in a card as it is

    real = metadata.version

    def version(name):
        if name == "nilearn":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    libraries = cards.environment(torch.device("cpu"))["libraries"]
    assert libraries["nilearn"] is None and libraries["torch"] == real("torch")


def test_environment_without_git_records_no_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    from privbench import __version__

    monkeypatch.setattr(cards.subprocess, "run", no_git)
    code = cards.environment(torch.device("cpu"))["code"]
    assert code == {"privbench": __version__, "git_commit": None, "git_dirty": None}


def test_a_run_records_the_commit_it_started_with(tmp_path, monkeypatch, test_cfg):
    """A commit made while a run trains (an editable install keeps the code it loaded) does not
    end up in that run's card."""
    from privbench import runner
    from privbench.defenses.none import NoProxy

    head = {"commit": "a" * 40}
    monkeypatch.setattr(cards, "_git_state", lambda: {"git_commit": head["commit"], "git_dirty": False})
    fit = NoProxy.fit

    def fit_then_commit(self, *args, **kwargs):
        report = fit(self, *args, **kwargs)
        head["commit"] = "b" * 40
        return report

    monkeypatch.setattr(NoProxy, "fit", fit_then_commit)
    test_cfg.train.iterations = 2
    card = runner.run(test_cfg, out=tmp_path, progress=False).card
    assert head["commit"] == "b" * 40 and card.code["git_commit"] == "a" * 40
