"""Result cards and run directories.

One run writes ``<out>/<task>/<defense>/<run-id>/`` with ``config.json`` (at the start),
``checkpoint.pt``, ``run.log``, raw per-scan scores and, when it finishes, ``card.json``: a
:class:`Card` (schema version 2, documented in the README) holding the resolved config and its
hash, seed, code and library versions, device, precision, timings, the utility of every
evaluated variant and every attack with what it was granted. Every file is written atomically,
so a crash never leaves a half-written card. Version-1 cards are still read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import platform
import subprocess
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import torch

from privbench import finite, io, worst_case
from privbench.errors import PrivbenchError

CARD = "card.json"
CONFIG = "config.json"
STOPPED = "stopped.json"  # a run stopped on a non-finite number: why, in place of a card
LOCK = ".card.lock"  # held while a card is read, changed and written (privbench attack)
CARD_VERSION = 2
READABLE_VERSIONS = (1, 2)
LIBRARIES = ("privbench", "torch", "monai", "numpy", "scipy", "nibabel", "nilearn", "pandas",
             "pytorch-msssim", "typer", "rich", "matplotlib")


@dataclass
class Card:
    """One run's result card (``card.json``, schema version 2; README "The card")."""

    run_id: str  # the run folder's name: <time>-<config hash>[-n]
    task: str
    defense: str
    preset: str
    seed: int
    config_hash: str  # privbench.config.config_hash of ``config``
    config: dict[str, Any]  # the resolved config (privbench.config.to_dict)
    timings: dict[str, Any]  # seconds and rates: data, training, evaluation, inference per volume
    utility: list[dict[str, Any]]  # per evaluated variant: variant, n_scans, dice and dice_std per class
    attacks: list[dict[str, Any]]  # per attack: status, granted, metrics, table, settings, files, seconds
    files: dict[str, str]  # what the run folder holds, by role
    data: dict[str, Any] = field(default_factory=dict)  # the task's summary: classes, spacing, scans by role
    code: dict[str, Any] = field(default_factory=dict)  # privbench version, git commit, uncommitted changes
    libraries: dict[str, Any] = field(default_factory=dict)  # versions of the libraries in LIBRARIES
    python: str = ""
    platform: str = ""
    device: dict[str, Any] = field(default_factory=dict)  # type, name, threads
    precision: dict[str, Any] = field(default_factory=dict)  # dtype the networks ran in, and why
    amp: bool = False  # whether bfloat16 autocast was on (kept from version 1)
    sections: dict[str, Any] = field(default_factory=dict)  # the defense's own (mixup: tta_curve, ...), top-level in JSON
    summary: list[str] = field(default_factory=list)  # the defense's own summary lines
    worst_case: dict[str, Any] = field(default_factory=dict)  # strongest identity and recovery attack (privbench.worst_case)
    card_version: int = CARD_VERSION

    def to_json(self) -> dict[str, Any]:
        """The card as JSON data: its fields, with the defense's sections as top-level keys."""
        data = {"card_version": self.card_version, **asdict(self)}
        sections = data.pop("sections")
        clash = set(sections) & set(data)
        if clash:
            raise ValueError(f"a defense's card section may not be named {sorted(clash)}")
        return data | sections

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Card":
        """A card from JSON data of version 1 or 2 (a missing required field raises KeyError)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "sections"}
        missing = [f.name for f in fields(cls) if f.name not in known
                   and f.default is MISSING and f.default_factory is MISSING]  # fields without a default
        if missing:
            raise KeyError(missing[0])
        return cls(**known, sections={k: v for k, v in data.items() if k not in names})


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file renamed into place; a NaN or infinite
    number (which JSON cannot hold) raises :class:`~privbench.errors.NonFiniteError` instead."""
    finite.require(data, f"refusing to write {path}")
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


write_text_atomic = io.write_text  # the name the rest of privbench writes text through


def new_run_dir(out: Path, task: str, defense: str, config_hash: str) -> Path:
    """Create a fresh ``out/task/defense/<time>-<hash>`` folder (unwritable -> clear error)."""
    parent = Path(out) / task / defense
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        run_dir = parent / (f"{stamp}-{config_hash}" + (f"-{n}" if n else ""))
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
        except OSError as exc:
            raise PrivbenchError(f"cannot create the run folder under {out}: "
                                 f"{exc.strerror or exc}") from exc
    raise PrivbenchError(f"too many runs named {stamp}-{config_hash} under {parent}")


def find_resumable(out: Path, task: str, defense: str, config_hash: str) -> Path | None:
    """The newest unfinished run (checkpoint, no card) of the same config, if any; a run that
    stopped on a non-finite number (:data:`STOPPED`) would stop again, and is not one."""
    parent = Path(out) / task / defense
    candidates = sorted(parent.glob(f"*-{config_hash}*"), key=_creation_order) if parent.is_dir() else []
    for run_dir in reversed(candidates):
        if (run_dir / "checkpoint.pt").exists() and not (run_dir / CARD).exists() and not (run_dir / STOPPED).exists():
            return run_dir
    return None


def _creation_order(run_dir: Path) -> tuple[str, int]:
    """``<time>-<hash>[-n]`` by time, then by ``n`` as a number (``-10`` after ``-9``)."""
    base, _, n = run_dir.name.rpartition("-")
    return (base, int(n)) if n.isdigit() and base.count("-") == 2 else (run_dir.name, 0)


def read_card(path: Path) -> dict[str, Any]:
    """One card's JSON data; a missing, unreadable or foreign file raises :class:`PrivbenchError`."""
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PrivbenchError(f"unreadable card {path}: {exc}") from exc
    if not isinstance(card, dict) or card.get("card_version") not in READABLE_VERSIONS:
        versions = " or ".join(map(str, READABLE_VERSIONS))
        raise PrivbenchError(f"{path} is not a privbench card (version {versions})")
    return card


def load(path: Path) -> Card:
    """One card as a :class:`Card` (version 1 or 2); a malformed one raises :class:`PrivbenchError`."""
    data = read_card(path)
    try:
        return Card.from_json(data)
    except KeyError as exc:
        raise PrivbenchError(f"malformed card {path}: missing {exc}") from exc
    except TypeError as exc:
        raise PrivbenchError(f"malformed card {path}: {exc}") from exc


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's card lock (``.card.lock``, an exclusive ``flock``): one process at a
    time reads, changes and writes a card, so concurrent writers never lose each other's update."""
    try:
        handle = open(Path(run_dir) / LOCK, "a")
    except OSError as exc:
        raise PrivbenchError(f"cannot lock {Path(run_dir) / LOCK}: {exc.strerror or exc}") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_attacks(path: Path, entries: list[dict[str, Any]]) -> Card:
    """Put attack ``entries`` into the card at ``path`` (replacing its entries of the same
    attacks and labels: ``bss`` and ``bss@iterations=3000`` are two), reading it afresh under the
    card lock: attacks added by another process while these ran are kept. Returns the card
    written."""
    def key(entry: dict[str, Any]) -> tuple[str, str]:
        return entry["attack"], entry.get("label", entry["attack"])

    with locked(Path(path).parent):
        card = load(path)
        new = {key(entry) for entry in entries}
        card.attacks = [e for e in card.attacks if key(e) not in new] + entries
        write(path, card)
    return card


def write(path: Path, card: Card) -> None:
    """Write ``card`` atomically as JSON (no NaN or infinite number), its worst case named
    from the attacks it holds now."""
    card.worst_case = worst_case.worst_case(card.attacks)
    write_json_atomic(path, card.to_json())


def environment(device: torch.device) -> dict[str, Any]:
    """Code version, library versions and device description for the card."""
    from privbench import __version__

    versions = {"privbench": __version__}
    for name in LIBRARIES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "code": {"privbench": versions["privbench"], **_git_state()},
        "libraries": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": {"type": device.type, "name": device_name, "torch_threads": torch.get_num_threads()},
    }


def _git_state() -> dict[str, Any]:
    """The commit of the privbench checkout in use, if it is one (None for an installed wheel)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != here.parent:  # privbench installed inside another repo
        return {"git_commit": None, "git_dirty": None}
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(dirty) if commit else None}
