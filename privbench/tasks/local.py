"""Tasks read from a user's local copy of a dataset (``ppmi``, ``brats2021``).

A :class:`LocalTask` takes the scans a dataset's layout lists (:class:`Source`), preprocesses
each through the cache (:mod:`privbench.tasks.preprocess`), and splits the subjects into the
four roles: by a seeded shuffle (``task.cohort_seed``, fractions as for ``mni-tissue``), or by
the user's split file, a CSV with columns ``subject,role`` and roles ``train``, ``test`` or
``public`` (subjects it does not list are left out; the reference pool is the first
``task.reference_subjects`` training subjects in sorted order). A scan that fails a check
stops the run with the file and the problem, or with ``task.on_bad_scan=skip`` is left out and
listed in the card (``data.skipped_scans``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import track

from privbench.config import TaskConfig
from privbench.errors import PrivbenchError
from privbench.tasks import preprocess
from privbench.tasks.base import Scan, Task, split_scans, split_subjects, with_validation
from privbench.tasks.cache import cache_root, remove_stale_temporaries

log = logging.getLogger("privbench")
SPLIT_ROLES = ("train", "test", "public")


@dataclass(frozen=True)
class Source:
    """One scan of a user's copy as its layout lists it; a missing file is reported, not raised,
    so that ``on_bad_scan=skip`` can skip it."""

    subject: str
    session: str
    image: Path | None
    label: Path | None
    labels: dict[int, int]  # label value in the file -> class index
    problem: str = ""  # why the layout could not list both files


def dataset_root(cfg: TaskConfig) -> Path:
    """``task.root``, checked to be an existing folder."""
    if not cfg.root:
        raise PrivbenchError(f"task {cfg.name!r} reads a local copy: point privbench at it with "
                             f"--set task.root=/path/to/the/dataset")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise PrivbenchError(f"task.root {root} is not a folder")
    return root


class LocalTask(Task):
    """A task built from a layout's :class:`Source` list, preprocessed and split."""

    def __init__(self, sources: list[Source], shape_mm: tuple[int, ...], cfg: TaskConfig, patch_size: int):
        if not sources:
            raise PrivbenchError(f"no scans found under {cfg.root} for task {self.name!r} (see the README's "
                                 f"layout for it)")
        cache = cache_root(cfg) / self.name
        remove_stale_temporaries(cache)
        shape = tuple(round(n / cfg.spacing) for n in shape_mm)
        scans, self.skipped = [], []
        console = Console(stderr=True)
        for source in track(sources, description=f"{self.name}: preparing scans", console=console,
                            transient=True, disable=not console.is_terminal):
            try:
                if source.problem:
                    raise preprocess.BadScan(source.problem)
                settings = preprocess.Settings(cfg.spacing, shape, tuple(sorted(source.labels.items())))
                image, label = preprocess.cached(cache, source.image, source.label, settings)
            except preprocess.BadScan as exc:
                if cfg.on_bad_scan != "skip":
                    raise PrivbenchError(f"bad scan ({source.subject} {source.session}): {exc} "
                                         f"(--set task.on_bad_scan=skip leaves such scans out)") from exc
                log.warning("skipping %s %s: %s", source.subject, source.session, exc)
                self.skipped.append({"subject": source.subject, "session": source.session, "problem": str(exc)})
                continue
            scans.append(Scan(source.subject, source.session, image, label))
        subjects = sorted({scan.subject for scan in scans})
        if not subjects:
            raise PrivbenchError(f"task {self.name!r}: every scan under {cfg.root} was skipped as bad")
        if cfg.split_file:
            left_out = {item["subject"] for item in self.skipped} - set(subjects)
            roles = read_split(Path(cfg.split_file), subjects, cfg, left_out)
        else:
            roles = split_subjects(subjects, cfg)
        super().__init__(split_scans(scans, roles, cfg.max_test_scans), cfg.spacing, patch_size)

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "skipped_scans": self.skipped}


def read_split(path: Path, subjects: list[str], cfg: TaskConfig,
               left_out: set[str] | frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Roles from a ``subject,role`` CSV; unknown roles or subjects are one-line errors, and
    ``left_out`` subjects (every scan skipped as bad) are dropped from it."""
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as exc:
        raise PrivbenchError(f"cannot read the split file {path}: {exc}") from exc
    if not {"subject", "role"} <= set(table.columns):
        raise PrivbenchError(f"split file {path}: needs the columns subject,role (found {', '.join(table.columns)})")
    bad_roles = sorted(set(table["role"]) - set(SPLIT_ROLES))
    if bad_roles:
        raise PrivbenchError(f"split file {path}: unknown roles {bad_roles} (use {', '.join(SPLIT_ROLES)})")
    if table["subject"].duplicated().any():
        raise PrivbenchError(f"split file {path}: subjects listed twice: "
                             f"{sorted(set(table.loc[table['subject'].duplicated(), 'subject']))[:5]}")
    table = table[~table["subject"].isin(left_out)]
    unknown = sorted(set(table["subject"]) - set(subjects))
    if unknown:
        raise PrivbenchError(f"split file {path}: subjects without usable scans: {unknown[:5]}"
                             f"{' ...' if len(unknown) > 5 else ''}")
    roles = {role: sorted(table.loc[table["role"] == role, "subject"]) for role in SPLIT_ROLES}
    if not roles["train"] or not roles["test"]:
        raise PrivbenchError(f"split file {path}: needs at least one train and one test subject")
    roles["reference"] = roles["train"][: cfg.reference_subjects]
    return with_validation(roles, cfg)
