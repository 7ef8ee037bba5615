"""Cache folders: content damage is detected, and a killed writer leaves nothing behind for long."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from privbench import config
from privbench.errors import PrivbenchError
from privbench.registry import create_task
from privbench.tasks import mni
from privbench.tasks.cache import atomic_folder, file_records, first_damaged, remove_stale_temporaries


def small(tmp_path):
    return config.resolve("test", {"task.cache_dir": str(tmp_path)})


def overwrite(path, offset=20_000, count=4000):
    """Overwrite ``count`` bytes of ``path`` with 0xFF (NaN voxels in float32), keeping its size."""
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


def test_a_content_change_of_the_same_size_is_detected(tmp_path):
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(50_000))
    records = file_records(folder)
    assert first_damaged(folder, records) is None
    overwrite(folder / "a.bin")
    assert (folder / "a.bin").stat().st_size == records["a.bin"]["size"]
    assert first_damaged(folder, records) == folder / "a.bin"


def test_a_damaged_cohort_scan_is_reported_not_used(tmp_path):
    cfg = small(tmp_path)
    task = create_task("mni-tissue", cfg=cfg)
    overwrite(task.scans("test")[0].image)
    with pytest.raises(PrivbenchError, match="corrupt cohort cache: .*_T1w.nii is missing, truncated or changed"):
        create_task("mni-tissue", cfg=cfg)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    host = socket.gethostname()
    stale = tmp_path / f"cohort.tmp-{host}-{dead.stdout.strip()}"
    alive = tmp_path / f"cohort.tmp-{host}-{os.getpid()}"
    elsewhere = tmp_path / f"cohort.tmp-another-machine-{dead.stdout.strip()}"
    for folder in (stale, alive, elsewhere):
        folder.mkdir()
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert alive.exists() and elsewhere.exists() and not stale.exists()


def test_kill_9_during_generation_leaves_nothing_after_the_next_run(tmp_path):
    cfg = small(tmp_path)
    folder = mni.cohort_dir(cfg.task)
    code = ("import sys; from privbench import config; from privbench.tasks import mni; "
            "mni.build_cohort(config.resolve('test', {'task.cache_dir': sys.argv[1]}).task)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    deadline = time.monotonic() + 120
    while not list(folder.parent.glob("*.tmp-*")) and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (left,) = folder.parent.glob("*.tmp-*")  # killed mid-generation: its folder is left behind ...
    assert not folder.exists()
    create_task("mni-tissue", cfg=cfg)  # ... until the next run
    assert not left.exists() and not list(folder.parent.glob("*.tmp-*"))
    files = json.loads((folder / "manifest.json").read_text())["files"]
    assert len(mni.read_manifest(folder)["scans"]) == len(files) // 2  # an image and a label each


def _has_done(folder):
    return (folder / "done").is_file()


def test_a_complete_entry_another_process_put_in_place_first_is_kept(tmp_path):
    final = tmp_path / "entry"
    with atomic_folder(final, "test cache", complete=_has_done) as tmp:
        (tmp / "done").write_text("second")
        final.mkdir()  # another worker finishes the same entry first; readers may be using it
        (final / "done").write_text("first")
    assert (final / "done").read_text() == "first"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_an_incomplete_entry_in_the_way_is_replaced(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "partial").write_text("left by older code")
    with atomic_folder(final, "test cache", complete=_has_done) as tmp:
        (tmp / "done").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["done"]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_poisoned_cache_whose_digests_match_stops_the_run_before_its_folder(tmp_path, cache_dir):
    """NaN voxels written into a cached training scan, the manifest's digests rewritten to match:
    the cache check passes, the finite check does not, and the run stops with one line naming
    the scan before it makes a run folder."""
    import shutil

    from typer.testing import CliRunner

    from privbench.cli import app

    cfg = config.resolve("test", {"task.cache_dir": str(cache_dir)})
    task = create_task(cfg.task.name, cfg=cfg)  # the session's cached test cohort
    poisoned = tmp_path / "cache" / task.folder.relative_to(cache_dir)
    shutil.copytree(task.folder, poisoned)
    victim = poisoned / task.scans("train")[0].image.name
    overwrite(victim)
    manifest = json.loads((poisoned / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in file_records(poisoned).items() if k != "manifest.json"}
    (poisoned / "manifest.json").write_text(json.dumps(manifest))
    mni.read_manifest(poisoned)  # the digests match: the cache check passes
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "--preset", "test", "--set", f"task.cache_dir={tmp_path / 'cache'}",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and f"{victim} holds NaN or infinite voxels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
