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


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs: a disk that fills up. Mounting one needs root (and a kernel that lets
    this container mount); elsewhere the tests that need it are skipped, saying why."""
    import os
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a 200 KiB tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(folder):
    """Write until the disk is full."""
    try:
        with open(folder / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:  # No space left on device, from a write or from the last flush
        pass


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(small_disk):
    import torch

    from privbench.engine.training import read_checkpoint, save_checkpoint

    net = torch.nn.Linear(4, 4)
    save_checkpoint(small_disk, {"net": net}, iteration=1)
    _fill(small_disk)
    with pytest.raises(PrivbenchError, match=r"cannot write .*small-disk/checkpoint.pt: No space left on device"):
        save_checkpoint(small_disk, {"net": torch.nn.Linear(4, 64)}, iteration=2)
    assert read_checkpoint(small_disk / "checkpoint.pt")["iteration"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pt", "filler"]


def test_a_run_onto_a_full_disk_stops_with_one_line_and_exit_2(small_disk):
    from typer.testing import CliRunner

    from privbench.cli import app

    result = CliRunner().invoke(app, ["run", "--preset", "test", "--out", str(small_disk), "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: cannot write {small_disk}/") and line.endswith("No space left on device")
    assert not list(small_disk.rglob(".*.tmp-*")) and not list(small_disk.rglob("card.json"))
