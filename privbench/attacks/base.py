"""What every attack provides, and what it may see (DESIGN.md, "Attacks").

The harness (this module and the runner) plays the client: it draws keys, encodes the test
scans and sends them to the server. The attacker gets only an :class:`Observation`, the
requests the server received and, where the threat model says so, what the server returned
and the public pool. The victims' keys, references and labels never reach it; the harness keeps
the truth (who is who, the real targets) to score the attack afterwards.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from privbench.config import RunConfig
from privbench.defenses.base import Defense
from privbench.errors import PrivbenchError
from privbench.tasks.base import Task

NOT_APPLICABLE = "not applicable"


@dataclass
class Observation:
    """One attacker's view: per request, the proxy the server received (``[1,1,D,H,W]`` or a
    defense's own shape) and, when observed, what the server returned."""

    proxies: list[torch.Tensor]
    outputs: list[torch.Tensor] | None = None


@dataclass
class Truth:
    """What the harness knows and the attacker does not: per request, the subject and session
    of the scan it carries, the clean image ``[1,1,D,H,W]`` (for calibration baselines) and the
    key's mixing weight (None for keys without one)."""

    subjects: list[str]
    sessions: list[str]
    images: list[torch.Tensor]
    weights: list[float | None]


@dataclass
class AttackResult:
    """An attack's contribution to the card: headline ``metrics``, a table of rows (the attack
    and its calibration baselines), files written into the run folder, and a ``label`` naming
    the variant in leaderboard columns (default: the attack's name)."""

    metrics: dict[str, float]
    label: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """An adversary against a trained defense."""

    name: str = ""
    applies_to: tuple[str, ...] = ("*",)  # defense names, or "*" for all
    observes: str = ""  # one line for the card: what the attacker sees
    headline: str = ""  # the metric that says how well it succeeded (the utility-privacy curve's x axis)

    def applies(self, defense: str) -> bool:
        return "*" in self.applies_to or defense in self.applies_to

    @abc.abstractmethod
    def run(self, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True) -> AttackResult:
        """Observe the defense on the task's test scans, attack, score against the truth."""


def observe_test_scans(defense: Defense, task: Task, *, seed: int, outputs: bool = False,
                       k: int = 1) -> tuple[Observation, Truth]:
    """Encode every test scan with a fresh key, as a client would (``k`` > 1: a reference-TTA
    key of k references, so one request holds k mixtures); optionally send each proxy to the
    server. Returns the attacker's view and, separately, the truth for scoring."""
    generator = torch.Generator().manual_seed(seed)
    proxies, returned, subjects, sessions, images, weights = [], [], [], [], [], []
    for scan in task.scans("test"):
        image = task.load(scan)[0][None]
        images.append(image)
        key = defense.new_key(generator) if k == 1 else defense.new_key(generator, k=k)
        proxy = defense.encode(image, key)
        proxies.append(proxy)
        if outputs:
            returned.append(defense.server(proxy))
        subjects.append(scan.subject)
        sessions.append(scan.session)
        weights.append(getattr(key, "a", None))
    return Observation(proxies, returned if outputs else None), Truth(subjects, sessions, images, weights)


def public_statistics(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's public knowledge of the population: the voxel-wise mean and variance
    ``[D,H,W]`` of the public pool's clean scans (at least two)."""
    scans = task.scans("public")
    if len(scans) < 2:
        raise PrivbenchError(f"this attack needs a public pool of at least two scans; task {task.name!r} "
                             f"has {len(scans)} (raise task.public_fraction)")
    images = torch.stack([task.load(scan)[0][0] for scan in scans])
    return images.mean(0), images.var(0)


def card_entry(attack: Attack, defense: str, result: AttackResult | None) -> dict[str, Any]:
    """The card's record of one attack: its results, or that it does not apply."""
    entry: dict[str, Any] = {"attack": attack.name, "observes": attack.observes}
    if result is None:
        return entry | {"status": NOT_APPLICABLE,
                        "reason": f"{attack.name} applies to {', '.join(attack.applies_to)}, not {defense}"}
    return entry | {"status": "done", "label": result.label or attack.name,
                    "metrics": result.metrics, "table": result.table,
                    "settings": result.settings, "files": result.files}
