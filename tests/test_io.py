"""The one atomic write: all or nothing at the path, never a temporary file left behind."""

import pytest

from privbench import io
from privbench.errors import PrivbenchError


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "card.json"
    target.write_text("old")
    io.write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_unwritable_place_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PrivbenchError, match="cannot write .*a-file/card.json"):
        io.write_text(blocker / "card.json", "{}")
