"""The run's truth record (``truth.json``): the client secrets its attacks' keys came from.

The victims' keys come from a client secret drawn from the operating system
(:func:`privbench.streams.client_secret`), never from the public run seed, so no attacker can
redraw them. The harness writes each secret here only after its attack has been scored, under
the card's lock, so that a finished result stays reproducible: replaying an attack with its
recorded secret (``privbench attack RUN -a NAME --replay``) sees the same keys and gives the
same numbers. The file is ``{"secrets": {"<attack>": "<64 hex digits>"}}``, an attack run with
overrides under its label (``bss@iterations=3000``).
"""

from __future__ import annotations

import json
from pathlib import Path

from privbench import card as cards
from privbench.errors import PrivbenchError

TRUTH = "truth.json"
STUDY = "study"  # the label of the secret a defense's own study (mixup's a-curve) drew from


def record(run_dir: Path, secrets: dict[str, int]) -> None:
    """Add (or replace) the secrets of ``labels`` in the run's truth record, under the card lock."""
    with cards.locked(run_dir):
        known = _read(Path(run_dir) / TRUTH) if (Path(run_dir) / TRUTH).exists() else {}
        known.update({label: f"{secret:064x}" for label, secret in secrets.items()})
        cards.write_json_atomic(Path(run_dir) / TRUTH, {"secrets": dict(sorted(known.items()))})


def recorded(run_dir: Path, label: str) -> int:
    """The secret the attack ``label`` of the run drew its keys from; one clear error where the
    record lacks it (a run from before secrets, or an attack never run)."""
    known = secrets(run_dir)
    if label not in known:
        raise PrivbenchError(f"no recorded client secret for {label!r} in {Path(run_dir) / TRUTH}: run it "
                             f"without --replay first")
    return known[label]


def secrets(run_dir: Path) -> dict[str, int]:
    """Every recorded secret of the run, by label (none when the run has no record)."""
    path = Path(run_dir) / TRUTH
    return {label: int(value, 16) for label, value in _read(path).items()} if path.exists() else {}


def _read(path: Path) -> dict[str, str]:
    """The record's secrets, validated: a hand-edited or damaged file is one clear error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrivbenchError(f"unreadable truth record {path}: {exc}") from None
    secrets = data.get("secrets") if isinstance(data, dict) else None
    if not isinstance(secrets, dict) or not all(
            isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in secrets.values()):
        raise PrivbenchError(f"{path} is not a truth record: expected {{\"secrets\": {{label: 64 hex digits}}}}")
    return secrets
