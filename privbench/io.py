"""The one way privbench writes a file: into a temporary sibling, renamed into place.

A reader never sees half a file: a crash or an error while writing leaves the previous version
(or nothing) at ``path`` and removes the temporary file. Every writer uses it, whatever it
writes with (text, ``torch.save``, ``savefig``). Whole folders are written the same way by
:func:`privbench.tasks.cache.atomic_folder`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from privbench.errors import PrivbenchError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` (``.<name>.tmp-<pid>``, so concurrent writers never share
    one) to write to; renamed to ``path`` when the block ends without error, removed otherwise.
    An :class:`OSError` becomes one line naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise PrivbenchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):  # gone already, or its folder cannot hold it
            tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
