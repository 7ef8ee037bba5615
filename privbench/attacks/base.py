"""The attack boundary (DESIGN.md, "Attacks"): what an attacker is given, what it gives back,
and how the harness scores it.

An attack has two halves, in the style of breaching's ``reconstruct`` / ``report`` split:

- the **attacker** (:meth:`Attack.reconstruct`) receives one :class:`Observation` and returns
  guesses (similarities, recovered images, estimated weights). The observation holds only what
  the attack's threat model grants (:data:`GRANTS`): the requests, in an order shuffled by a
  stream the attacker cannot reproduce, the defense's public description, and where granted the
  server's answers, a public pool, a clean gallery, the mixing weights or (white-box) a copy of
  the encoding's trained weights. Never the defense
  object, the task, the run config or seed, keys, references or test labels.
- the **harness** (:func:`execute`, with the attack's :meth:`Attack.victims` and
  :meth:`Attack.score`) plays the victims' client: it draws their keys, sends their requests,
  keeps the :class:`Truth`, and scores the guesses against it, adding the calibration rows
  (attack on unprotected scans, oracle, mixture or public mean as the guess, chance).

The boundary is a type, not a sandbox: an attacker's code runs in the same process and could
read files. What it is handed is what the card records as granted.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from privbench import engine, streams
from privbench.config import RunConfig, defense_sections
from privbench.errors import PrivbenchError
from privbench.registry import ATTACKS
from privbench.tasks.base import Scan, Task

if TYPE_CHECKING:
    from privbench.defenses.base import Defense, WhiteBox

NOT_APPLICABLE = "not applicable"

GRANTS = {  # what a threat model may grant beyond the requests and the defense's public description
    "answers": "the server's answer to every request",
    "public_pool": "clean scans of a public pool (images and labels), not of the victims",
    "gallery": "clean scans of many people with their identities: the test subjects' scans and the public pool",
    "mixing_weight": "each request's mixing weight a",
    "weights": "the encoding's trained weights, which the server holds (white-box), applied with keys the attacker draws",
    "discriminator": "the identity discriminator the encoding was trained against, which the server trained with it",
}


@dataclass(frozen=True)
class DefenseDescription:
    """The defense as the world knows it (Kerckhoffs): its name and its public config sections."""

    name: str
    config: dict[str, Any]


class PublicPool:
    """Clean scans of people who are not the victims, loaded from the task's public role but
    holding no reference to the task. Duck-types the two calls a patch sampler makes
    (:meth:`scans`, :meth:`arrays`), so an attacker can train on it like a defense trains."""

    name = "public pool"

    def __init__(self, task: Task):
        self._scans = [Scan(s.subject, s.session, Path(), Path()) for s in task.scans("public")]
        self._volumes = [task.arrays(scan) for scan in task.scans("public")]
        if len(self._scans) < 2:
            raise PrivbenchError(f"this attack needs a public pool of at least two scans; task {task.name!r} "
                                 f"has {len(self._scans)} (raise task.public_fraction)")

    def scans(self, role: str = "public") -> list[Scan]:
        if role != "public":
            raise PrivbenchError(f"the attacker holds public scans only, not {role!r} scans")
        return list(self._scans)

    def arrays(self, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
        return self._volumes[self._scans.index(scan)]

    def images(self) -> torch.Tensor:
        """Every public image ``[N,1,D,H,W]``."""
        return torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
                            for image, _ in self._volumes])

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The voxel-wise mean and variance ``[D,H,W]`` of the public images."""
        images = self.images()[:, 0]
        return images.mean(0), images.var(0)


@dataclass(frozen=True)
class Gallery:
    """An attacker's clean scans ``[G,1,D,H,W]`` with their identities, and the public pool's
    voxel-wise mean and variance (one volume each)."""

    images: torch.Tensor
    subjects: list[str]
    sessions: list[str]
    mean: torch.Tensor
    variance: torch.Tensor


def build_gallery(task: Task, pool: PublicPool) -> Gallery:
    """Clean scans of the test subjects and of the public pool, and the public pool's statistics."""
    scans = task.scans("test") + task.scans("public")
    images = torch.stack([task.load(scan)[0] for scan in scans])
    return Gallery(images, [s.subject for s in scans], [s.session for s in scans], *pool.statistics())


@dataclass(frozen=True)
class Runtime:
    """Where and how the attacker computes: not knowledge about the victims."""

    device: torch.device
    amp: bool
    patch_size: int  # the server's patch size (it trains on it)
    checkpoint_every: int
    workdir: Path  # the attacker's own folder for its checkpoints (see :func:`attacker_workdir`)
    progress: bool = True


@dataclass(frozen=True)
class Observation:
    """Everything one attacker is given (see the module): ``requests[i]`` is one request as
    the server received it (``[K,1,D,H,W]``, or a patch), ``answers[i]`` the server's answer
    (None unless granted); ``seed`` is the attacker's own randomness."""

    requests: list[torch.Tensor]
    defense: DefenseDescription
    config: Any
    seed: int
    runtime: Runtime
    granted: tuple[str, ...] = ()
    answers: list[torch.Tensor] | None = None
    public: PublicPool | None = None
    gallery: Gallery | None = None
    weights: list[float] | None = None
    white_box: "WhiteBox | None" = None
    discriminator: torch.nn.Module | None = None  # embeds a volume [1,1,D,H,W] -> [1,E], unit length


@dataclass
class Truth:
    """What the harness knows and the attacker does not, per request (in the observation's
    order): the subject and session of the scan it carries, the clean target (image or patch),
    the key's mixing weight (None for keys without one), and anything else an attack's scoring
    needs (``extra``: lists in the same order; ``shared``: the rest)."""

    subjects: list[str]
    sessions: list[str]
    images: list[torch.Tensor]
    weights: list[float | None]
    extra: dict[str, list[Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # not per request (e.g. a scoring gallery)

    def reordered(self, order: list[int]) -> "Truth":
        pick = lambda values: [values[i] for i in order]  # noqa: E731
        return Truth(pick(self.subjects), pick(self.sessions), pick(self.images), pick(self.weights),
                     {k: pick(v) for k, v in self.extra.items()}, self.shared)


@dataclass
class Victims:
    """The requests a harness sent (and the server's answers, if it kept them) and their truth."""

    requests: list[torch.Tensor]
    truth: Truth
    answers: list[torch.Tensor] | None = None


class Client:
    """The victims' client, played by the harness: the trained defense, the task's test scans
    and key streams of its own, drawn from the client secret under ``names``."""

    def __init__(self, defense: "Defense", task: Task, cfg: RunConfig, secret: int, names: tuple[str, ...]):
        self.defense, self.task, self.cfg = defense, task, cfg
        self._secret, self._names = secret, names
        self.generator = streams.generator(secret, "client", *names)

    def rng(self, *names: str) -> np.random.Generator:
        """Another of the client's secret streams (e.g. where bss cuts its patches)."""
        return streams.rng(self._secret, "client", *self._names, *names)

    def new_key(self, k: int = 1) -> Any:
        return self.defense.new_key(self.generator) if k == 1 else self.defense.new_key(self.generator, k=k)

    def send_test_scans(self, *, answers: bool = False, k: int = 1) -> Victims:
        """Every test scan encoded with a fresh key (``k`` > 1: a reference-TTA key of k
        references, so one request holds k mixtures), optionally sent to the server."""
        requests, returned, subjects, sessions, images, weights = [], [], [], [], [], []
        for scan in self.task.scans("test"):
            image = self.task.load(scan)[0][None]
            key = self.new_key(k)
            proxy = self.defense.encode(image, key)
            requests.append(proxy)
            if answers:
                returned.append(self.defense.server(proxy))
            subjects.append(scan.subject)
            sessions.append(scan.session)
            images.append(image)
            weights.append(getattr(key, "a", None))
        return Victims(requests, Truth(subjects, sessions, images, weights), returned if answers else None)


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
    """An adversary against a trained defense: :meth:`reconstruct` is the attacker, the rest
    is the harness's half (which requests the victims send, and how guesses are scored)."""

    name: str = ""
    applies_to: tuple[str, ...] = ("*",)  # defense names, or "*" for all
    observes: str = ""  # one line for the card: what the attacker sees
    headline: str = ""  # the metric that says how well it succeeded (the utility-privacy curve's x axis)
    grants: tuple[str, ...] = ()  # keys of GRANTS this threat model hands the attacker
    identifies: str = ""  # the metric of its top-1 identification rate, if it names people (worst case)
    recovers: str = ""  # the metric of its recovery MS-SSIM, if it recovers images (worst case)
    # the guesses among its metrics that need no training and no cleverness (the mixture or the
    # request itself taken as the image, linked as it is): "identity"/"recovery" -> {guess: metric};
    # the worst case counts them, so it is never weaker than doing nothing
    naive: dict[str, dict[str, str]] = {}

    def applies(self, defense: str) -> bool:
        return "*" in self.applies_to or defense in self.applies_to

    def granted(self, config: Any, defense: str = "") -> tuple[str, ...]:
        """The grants for this config against the defense called ``defense`` ("": any), for an
        attack whose view depends on either to override."""
        return self.grants

    def victims(self, client: Client, config: Any) -> Victims:
        """Harness: the requests the victims send while this attacker watches (default: one
        request per test scan, with the answers if granted)."""
        return client.send_test_scans(answers="answers" in self.granted(config, client.defense.name))

    @abc.abstractmethod
    def reconstruct(self, observation: Observation) -> Any:
        """The attacker: guesses from the observation alone."""

    @abc.abstractmethod
    def score(self, guesses: Any, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        """Harness: score the guesses against the truth, with calibration rows; write files."""


def attack_config(cfg: RunConfig, name: str) -> Any:
    """The config section the attack ``name`` declares in the registry, or None (none declared,
    or an attack that is not registered)."""
    if name not in ATTACKS.names() or not ATTACKS.get(name).sections:
        return None
    return cfg.sections[ATTACKS.get(name).sections[0][0]]


def execute(attack: Attack, defense: "Defense", task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True, secret: int | None = None, scenario: str = "") -> AttackResult:
    """Run one attack against a trained defense through the boundary (see the module). The
    victims' keys and the order of their requests come from the client ``secret`` (a fresh
    one when None: :func:`privbench.streams.client_secret`), never from the run's public seed;
    each ``scenario`` (e.g. ``a=0.3`` of the a-curve) draws its own: one attacker seeing the
    same scans again must not see them under the same keys."""
    config = attack_config(cfg, attack.name)
    granted = attack.granted(config, defense.name)
    unknown = set(granted) - set(GRANTS)
    if unknown:
        raise ValueError(f"attack {attack.name!r} grants unknown {sorted(unknown)} (known: {sorted(GRANTS)})")
    secret = streams.client_secret() if secret is None else secret
    names = (attack.name, scenario) if scenario else (attack.name,)
    victims = attack.victims(Client(defense, task, cfg, secret, names), config)
    order = torch.randperm(len(victims.requests), generator=streams.generator(secret, "order", *names))
    order = order.tolist()
    truth = victims.truth.reordered(order)
    pool = PublicPool(task) if {"public_pool", "gallery"} & set(granted) else None
    observation = Observation(
        requests=[victims.requests[i] for i in order],
        defense=DefenseDescription(defense.name, defense_sections(cfg, defense.name)),
        config=dataclasses.replace(config) if dataclasses.is_dataclass(config) else config,
        seed=streams.seed_of(cfg.seed, "attacker", attack.name),
        runtime=Runtime(engine.resolve_device(cfg.device), cfg.train.amp, cfg.train.patch_size,
                        cfg.train.checkpoint_every, attacker_workdir(attack, config, cfg, run_dir), progress),
        granted=tuple(granted),
        answers=[victims.answers[i] for i in order] if "answers" in granted and victims.answers else None,
        public=pool if "public_pool" in granted else None,
        gallery=build_gallery(task, pool) if "gallery" in granted and pool else None,
        weights=list(truth.weights) if "mixing_weight" in granted else None,
        white_box=defense.white_box() if "weights" in granted else None,
        discriminator=defense.identity_embedder() if "discriminator" in granted else None,
    )
    guesses = attack.reconstruct(observation)
    return attack.score(guesses, truth, observation, run_dir)


def attacker_workdir(attack: Attack, config: Any, cfg: RunConfig, run_dir: Path) -> Path:
    """``run_dir/attackers/<attack>-<key>``: where one attacker keeps its checkpoints. The key
    hashes what its training depends on (its config section, the run's seed, patch size and
    precision, and the source of the attack's module), so a run folder's finished checkpoint is
    resumed only by the same attacker and never read after its code or settings changed."""
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    module = inspect.getsourcefile(type(attack))
    source = Path(module).read_bytes() if module else b""
    what = json.dumps({"config": settings, "seed": cfg.seed, "patch_size": cfg.train.patch_size,
                       "amp": cfg.train.amp, "device": cfg.device}, sort_keys=True, default=str)
    key = hashlib.sha256(what.encode() + hashlib.sha256(source).digest()).hexdigest()[:12]
    return run_dir / "attackers" / f"{attack.name}-{key}"


def card_entry(attack: Attack, defense: str, result: AttackResult | None, config: Any = None) -> dict[str, Any]:
    """The card's record of one attack: what it was granted, its results, or that it does not apply."""
    entry: dict[str, Any] = {"attack": attack.name, "observes": attack.observes}
    if result is None:
        return entry | {"status": NOT_APPLICABLE,
                        "reason": f"{attack.name} applies to {', '.join(attack.applies_to)}, not {defense}"}
    granted = ["requests", "defense's public config", *attack.granted(config, defense)]
    return entry | {"status": "done", "label": result.label or attack.name, "granted": granted,
                    "measures": {"identity": attack.identifies, "recovery": attack.recovers,
                                 "naive": attack.naive},
                    "metrics": result.metrics, "table": result.table,
                    "settings": result.settings, "files": result.files}
