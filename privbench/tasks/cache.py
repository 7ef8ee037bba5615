"""Where tasks keep generated or preprocessed volumes, and how a cache folder is written safely.

A cache folder is filled under a temporary name (``<name>.tmp-<host>-<pid>``) and renamed into
place only when complete, and it records its files' sizes and SHA-256 digests, checked whenever
it is used, so that neither an interrupted write nor a file damaged later is mistaken for a
good one. Temporary folders of processes that died (``kill -9``) are removed by the next write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable, Iterator

from privbench.config import TaskConfig
from privbench.errors import PrivbenchError

CACHE_FORMAT = 2  # part of every cache key: 2 records SHA-256 digests (1 recorded sizes only)
_TEMPORARY = re.compile(r".+\.tmp-(?P<host>.+)-(?P<pid>\d+)")  # atomic_folder's temporary names


def cache_root(cfg: TaskConfig) -> Path:
    """Where tasks cache volumes: ``task.cache_dir``, ``$PRIVBENCH_CACHE`` or ~/.cache/privbench."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("PRIVBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "privbench"


@contextlib.contextmanager
def atomic_folder(final: Path, what: str, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A fresh temporary sibling of ``final`` to fill; renamed to ``final`` when the block ends
    without error, removed when it fails (stale siblings of dead processes are removed first).
    Write errors become one line naming ``what``.

    Processes that fill the same entry at once (test workers sharing a cache) all succeed: the
    first rename wins and the others discard their copy, since removing a folder that
    ``complete`` accepts would pull files from under its readers. Only a folder ``complete``
    rejects (damaged, or left by older code) is replaced."""
    tmp = final.with_name(f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(final.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            _put_in_place(tmp, final, complete)
        except OSError as exc:
            raise PrivbenchError(f"cannot write the {what} under {final.parent}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _put_in_place(tmp: Path, final: Path, complete: Callable[[Path], bool]) -> None:
    """Rename ``tmp`` to ``final`` unless a complete ``final`` is already there."""
    try:
        tmp.rename(final)  # atomic; refused while final is a folder with files
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if complete(final):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def file_records(folder: Path) -> dict[str, dict[str, object]]:
    """Size and SHA-256 of every file in ``folder`` (to record when it is complete)."""
    return {path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(folder.iterdir()) if path.is_file()}


def first_damaged(folder: Path, records: dict[str, dict[str, object]]) -> Path | None:
    """The first file of ``records`` that is missing from ``folder``, or whose size or content
    (SHA-256) is not the recorded one."""
    for name, record in records.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != record["size"] or _sha256(path) != record["sha256"]:
            return path
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Remove the temporary folders that :func:`atomic_folder` left in ``parent`` when its
    process died without cleaning up (``kill -9``, power loss); folders of processes still
    alive, or of other machines sharing the cache, are left alone. Returns what was removed."""
    removed = []
    host = socket.gethostname()
    for path in parent.glob("*.tmp-*") if parent.is_dir() else ():
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True
