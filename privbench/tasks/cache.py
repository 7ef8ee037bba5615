"""Where tasks keep generated or preprocessed volumes, and how a cache folder is written safely.

A cache folder is filled under a temporary name and renamed into place only when complete, and
it records its files' sizes, so that an interrupted write is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from privbench.config import TaskConfig
from privbench.errors import PrivbenchError


def cache_root(cfg: TaskConfig) -> Path:
    """Where tasks cache volumes: ``task.cache_dir``, ``$PRIVBENCH_CACHE`` or ~/.cache/privbench."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("PRIVBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "privbench"


@contextlib.contextmanager
def atomic_folder(final: Path, what: str) -> Iterator[Path]:
    """A fresh temporary sibling of ``final`` to fill; renamed to ``final`` when the block ends
    without error, removed when it fails. Write errors become one line naming ``what``."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder left by an older failure
            tmp.rename(final)
        except OSError as exc:
            raise PrivbenchError(f"cannot write the {what} under {final.parent}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sizes(folder: Path) -> dict[str, int]:
    """Size in bytes of every file in ``folder`` (to record when it is complete)."""
    return {path.name: path.stat().st_size for path in folder.iterdir() if path.is_file()}


def first_damaged(folder: Path, sizes: dict[str, int]) -> Path | None:
    """The first file of ``sizes`` that is missing from ``folder`` or has another size."""
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return path
    return None
