"""One run: task -> defense.fit -> defense.evaluate -> attacks -> defense.study -> card.

:func:`run` is what ``privbench run`` calls. It checks every name, builds the task (bad data
and unmet requirements stop it here, before anything is written), creates (or, with
``resume``, reopens) the run folder, trains the defense, lets it evaluate itself on the test
scans through its client-server protocol (:mod:`privbench.evaluation`), runs the attacks
through their boundary (:mod:`privbench.attacks.base`), lets the defense run a study of its own
(mixup: the a-curve), and writes per-scan scores, figures and the :class:`~privbench.card.Card`.
:func:`attack` (``privbench attack``) adds attacks to a finished run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from privbench import card as cards
from privbench.card import Card
from privbench.attacks.base import Attack, attack_config, card_entry, execute
from privbench import collapse, convergence, engine, finite, precision, resources, streams, truth
from privbench.engine import distributed
from privbench.config import RunConfig, config_hash, from_dict, set_value, split_item, to_dict, validate
from privbench.defenses.base import Defense
from privbench.errors import Interrupted, NonFiniteError, PrivbenchError
from privbench.evaluation import PER_SCAN, Study
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS, Task
from privbench.registry import ATTACKS, DEFENSES, TASKS, create_attack, create_defense, create_task

log = logging.getLogger("privbench")
T = TypeVar("T")


@dataclass
class RunResult:
    """Where a run wrote its files, and its card."""

    run_dir: Path
    card: Card | None  # None on the ranks other than 0 of a multi-process run (rank 0 writes it)


def run(cfg: RunConfig, *, out: str | Path = "runs", resume: bool = False,
        progress: bool = True, secret: int | None = None) -> RunResult:
    """Train and evaluate ``cfg.defense`` on ``cfg.task``; write and return the result card.

    With ``resume``, the newest unfinished run of the same config hash under ``out`` is
    continued from its last checkpoint (an error if there is none). Everything that can be
    checked before training (names, memory, data, the components' requirements) is checked
    before the run folder exists. A NaN or infinite loss, prediction or score stops the run
    with :class:`~privbench.errors.NonFiniteError` and no card.

    The attacks' victims draw their keys from the client ``secret`` (a fresh one from the
    operating system when None; the regression gate passes a fixed one), recorded in the run's
    ``truth.json`` once the attacks are scored (:mod:`privbench.truth`).
    """
    device, digest = _checked(cfg)
    device = distributed.start(device)  # under torchrun: join the ranks (rank 0 decides and writes)
    engine.fast_cuda_math()
    distributed.require_divisible(cfg.train.batch_size)
    lead = distributed.rank() == 0
    run_dir = cards.find_resumable(Path(out), cfg.task.name, cfg.defense, digest) if resume and lead else None
    run_dir = distributed.broadcast(run_dir)
    if resume and run_dir is None:
        raise PrivbenchError(f"nothing to resume: no unfinished {cfg.task.name}/{cfg.defense} "
                             f"run with config {digest} under {out}")
    began = time.perf_counter()
    task = create_task(cfg.task.name, cfg=cfg)  # bad data stops the run before its folder exists
    task.check_finite()
    data_seconds = time.perf_counter() - began
    defense: Defense = create_defense(cfg.defense)
    attackers = [create_attack(name) for name in cfg.attacks]
    check_requirements(task, cfg, defense)
    chosen = precision.choose(device, cfg.train.amp)
    if lead:
        run_dir = run_dir or cards.new_run_dir(Path(out), cfg.task.name, cfg.defense, digest)
    run_dir = distributed.broadcast(run_dir)
    if not lead:  # another rank: its share of training, then nothing to write
        engine.seed_everything(cfg.seed, deterministic=device.type == "cpu")
        defense.fit(task, cfg, device=device, progress=False, workdir=run_dir)
        distributed.finish()
        return RunResult(run_dir, None)
    started_with = cards.environment(device)  # the code and libraries as the run starts, not as it ends
    with _marked_if_stopped(run_dir), _interruptible(run_dir), _log_to(run_dir / "run.log"):
        cards.write_json_atomic(run_dir / cards.CONFIG, {"config": to_dict(cfg, used_only=True),
                                                            "config_hash": digest})
        log.info("run %s: task %s, defense %s, preset %s, seed %d, config %s", run_dir.name,
                 cfg.task.name, cfg.defense, cfg.preset, cfg.seed, digest)
        log.info("precision: %s (%s); data ready in %.1f s: %s", chosen.dtype, chosen.reason,
                 data_seconds, task.summary())
        engine.seed_everything(cfg.seed, deterministic=device.type == "cpu")
        report = defense.fit(task, cfg, device=device, progress=progress, workdir=run_dir)
        processes = distributed.describe()
        distributed.finish()
        progress_section, progress_files, progress_lines = convergence.report(
            run_dir, cfg.train.iterations, f"{cfg.defense} on {cfg.task.name}, seed {cfg.seed}")
        began = time.perf_counter()
        evaluation = _stage(f"evaluation of {cfg.defense}", defense.evaluate, task, cfg, run_dir=run_dir)
        timings = {"data_seconds": data_seconds, **_training_timings(report),
                   "eval_seconds": time.perf_counter() - began, **evaluation.timings}
        finite.require(evaluation.utility, f"evaluation of {cfg.defense}")
        cards.write_text_atomic(run_dir / PER_SCAN, evaluation.per_scan.to_csv(index=False))
        for entry in evaluation.utility:
            log.info("test dice (%s): %s", entry["variant"], entry["dice"])
        encoding, encoding_line = _stage(f"the encoding measures of {cfg.defense}", collapse.section, defense,
                                         (task.load(scan)[0] for scan in task.scans("test")), cfg.seed)
        finite.require(encoding, f"the encoding measures of {cfg.defense}")
        log.info("%s", encoding_line)
        secret = streams.client_secret() if secret is None else secret
        attacks = [run_attack(attacker, defense, task, cfg, run_dir=run_dir, progress=progress, secret=secret)
                   for attacker in attackers]
        study = _stage(f"the study of {cfg.defense}", defense.study, task, cfg, attackers,
                       run_dir=run_dir, progress=progress, secret=secret) or Study()
        truth.record(run_dir, {**{attacker.name: secret for attacker in attackers},
                               **({truth.STUDY: secret} if study.files else {})})
        card = Card(run_dir.name, cfg.task.name, cfg.defense, cfg.preset, cfg.seed, digest,
                    to_dict(cfg, used_only=True), timings, evaluation.utility, attacks,
                    {"checkpoint": engine.CHECKPOINT, "log": "run.log", "per_scan": PER_SCAN,
                     **progress_files, **evaluation.files, **study.files},
                    data=task.summary(), **started_with, precision=chosen.card(),
                    amp=chosen.autocast, sections={**evaluation.sections, **study.sections, "encoding": encoding,
                                                   **({"convergence": progress_section} if progress_section else {}),
                                                   **({"distributed": processes} if processes else {})},
                    summary=[*progress_lines, *evaluation.summary, encoding_line])
        cards.write(run_dir / cards.CARD, card)
        log.info("card written to %s", run_dir / cards.CARD)
    return RunResult(run_dir, card)


def _checked(cfg: RunConfig) -> tuple[torch.device, str]:
    """Fail on unknown names and on a run that cannot fit in memory; the device and config hash."""
    TASKS.get(cfg.task.name)
    DEFENSES.get(cfg.defense)
    for name in cfg.attacks:
        ATTACKS.get(name)
    device = engine.resolve_device(cfg.device)
    resources.check_fits(cfg, device)
    return device, config_hash(cfg)


def _training_timings(report: engine.TrainReport) -> dict[str, Any]:
    """Training time over every process that trained the run (None where an earlier one's was
    not recorded), and the speed of this process (None if it resumed a finished checkpoint)."""
    return {"train_seconds": report.total_seconds, "train_seconds_this_process": report.seconds,
            "train_iterations": report.iterations, "train_resumed_from": report.start_iteration,
            "train_it_per_s": report.it_per_s,
            "train_seconds_per_iteration": 1 / report.it_per_s if report.it_per_s else None}


def attack(run_dir: str | Path, names: list[str], *, overrides: list[str] | None = None,
           replay: bool = False, progress: bool = True) -> RunResult:
    """Run the attacks ``names`` (each once) against the trained defense of a finished run and
    add them to its card (replacing earlier entries of the same attacks and settings; entries
    that other processes add meanwhile are kept: the card is re-read and written under its
    lock). The defense is restored from the run's final checkpoint, which is only read; each new
    entry records when and with which code it ran.

    ``overrides`` (``attack.bss.iterations=3000``) change the named attacks' own settings only;
    an attack run with overrides is labelled with them (``bss@iterations=3000``), so one run's
    card can hold an attacker at several budgets, all scored on the same requests.

    Each attack draws its victims' keys from a fresh client secret, recorded in ``truth.json``
    after scoring (an attack with overrides: the secret of the run's own entry of that attack,
    so it sees the same victims); with ``replay``, from the secret recorded for its label, so the
    same keys give the same numbers again."""
    run_dir = Path(run_dir)
    card = cards.load(run_dir / cards.CARD)
    for registry, name in ((TASKS, card.task), (DEFENSES, card.defense)):
        if name not in registry.names():
            raise PrivbenchError(f"{registry.kind} {name!r} is not installed (it came from a plugin: "
                                 f"install it again to attack this run)")
    cfg = from_dict(card.config)
    names = list(dict.fromkeys(names))  # an attack named twice runs once
    for name in names:
        ATTACKS.get(name)
    cfg.attacks = tuple(names)
    labels = _apply_attack_overrides(cfg, names, overrides or [])
    device = engine.resolve_device(cfg.device)
    if not os.access(run_dir, os.W_OK) or not os.access(run_dir / cards.CARD, os.W_OK):
        raise PrivbenchError(f"cannot add attacks to {run_dir}: the folder or its card is not writable")
    task = create_task(cfg.task.name, cfg=cfg)
    task.check_finite()
    defense: Defense = create_defense(cfg.defense)
    check_requirements(task, cfg, defense)
    engine.seed_everything(cfg.seed, deterministic=device.type == "cpu")
    defense.restore(run_dir, task, cfg, device=device)  # an unfinished run is refused; writes nothing
    with _interruptible(None), _log_to(run_dir / "run.log"):
        log.info("attack %s with %s", run_dir.name, ", ".join(names))
        added = {"added": time.strftime("%Y-%m-%dT%H:%M:%S"), **cards.environment(device)}
        chosen = {name: labels.get(name, {}).get("label", name) for name in names}
        secrets = {chosen[name]: _secret_for(run_dir, name, chosen[name], replay) for name in names}
        entries = [_labelled_attack(name, labels.get(name), defense, task, cfg, run_dir, progress,
                                    secrets[chosen[name]]) | {"added_later": added} for name in names]
        truth.record(run_dir, {label: secrets[label] for label in chosen.values()})
        card = cards.add_attacks(run_dir / cards.CARD, entries)  # re-read under a lock: others' entries stay
        log.info("card updated: %s", run_dir / cards.CARD)
    return RunResult(run_dir, card)


def _secret_for(run_dir: Path, name: str, label: str, replay: bool) -> int:
    """The client secret an attack added to a run draws its victims' keys from: the one recorded
    for ``label`` with ``replay``; for an attack with overrides, the one of the run's own entry of
    that attack where there is one (another budget, the same victims); a fresh one otherwise."""
    if replay:
        return truth.recorded(run_dir, label)
    if label != name and name in truth.secrets(run_dir):
        return truth.recorded(run_dir, name)
    return streams.client_secret()


def _labelled_attack(name: str, label: dict[str, Any] | None, defense: Defense, task: Task, cfg: RunConfig,
                     run_dir: Path, progress: bool, secret: int) -> dict[str, Any]:
    """One attack's card entry; an attack run with overrides writes its files (and keeps its
    checkpoints) in ``attacks/<label>/`` of the run folder, beside the default one's, not over them."""
    if label is None:
        return run_attack(create_attack(name), defense, task, cfg, run_dir=run_dir, progress=progress, secret=secret)
    where = run_dir / "attacks" / label["label"]
    where.mkdir(parents=True, exist_ok=True)
    entry = run_attack(create_attack(name), defense, task, cfg, run_dir=where, progress=progress, secret=secret) | label
    if "files" in entry:
        entry["files"] = {k: f"attacks/{label['label']}/{v}" for k, v in entry["files"].items()}
    return entry


def _apply_attack_overrides(cfg: RunConfig, names: list[str], overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Set ``overrides`` (``key=value``) on ``cfg``, where each key must be a setting of one of
    the attacks ``names``; the label and overrides each overridden attack's card entry carries."""
    sections = {section: name for name in names for section, _ in ATTACKS.get(name).sections}
    changed: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, value = split_item(item)
        section, _, leaf = key.rpartition(".")
        if section not in sections:
            own = ", ".join(f"{s}.*" for s in sections) or "none: these attacks have no settings"
            raise PrivbenchError(f"privbench attack --set {key}: only the named attacks' own settings can "
                                 f"change here ({own})")
        set_value(cfg, key, value)
        changed.setdefault(sections[section], {})[leaf] = getattr(cfg.sections[section], leaf)
    validate(cfg)
    return {name: {"label": f"{name}@" + ",".join(f"{k}={v}" for k, v in values.items()),
                   "overrides": {f"{section}.{k}": v for section, owner in sections.items() if owner == name
                                 for k, v in values.items()}}
            for name, values in changed.items()}


def check_requirements(task: Task, cfg: RunConfig, defense: Defense | None = None) -> None:
    """Stop before the run folder exists when the defense (on the training scans) or an attack
    (on the test scans) needs repeated scans of a subject and the task has none, when an attack
    needs a public pool the task lacks, or when ``defense.check`` finds the task unfit."""
    needs = [(DEFENSES.get(cfg.defense), "train"), *((ATTACKS.get(name), "test") for name in cfg.attacks)]
    for entry, role in needs:
        if REPEATED_SCANS in entry.requires and not task.repeated_subjects(role):
            raise PrivbenchError(f"{entry.kind} {entry.name!r} needs {REPEATED_SCANS}, but task {task.name!r} "
                                 f"has one scan per subject among its {role} scans")
        if PUBLIC_POOL in entry.requires and len(task.scans("public")) < 2:
            raise PrivbenchError(f"{entry.kind} {entry.name!r} needs {PUBLIC_POOL}; task {task.name!r} has "
                                 f"{len(task.scans('public'))} (raise task.public_fraction)")
    if defense is not None:
        defense.check(task, cfg)


def run_attack(attack: Attack, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
               progress: bool = True, secret: int | None = None) -> dict[str, Any]:
    """One attack against the trained defense, its victims' keys from the client ``secret``, as
    a card entry (with its wall time), or a "not applicable" entry where the attack does not
    apply to this defense."""
    name = attack.name
    if not attack.applies(cfg.defense):
        log.info("attack %s: not applicable to %s", name, cfg.defense)
        return card_entry(attack, cfg.defense, None)
    began = time.perf_counter()
    result = _stage(f"attack {name}", execute, attack, defense, task, cfg, run_dir=run_dir, progress=progress,
                    secret=secret)
    finite.require({"metrics": result.metrics, "table": result.table}, f"attack {name}")
    log.info("attack %s: %s", name, result.metrics)
    entry = card_entry(attack, cfg.defense, result, attack_config(cfg, name))
    return entry | {"seconds": time.perf_counter() - began}


def _stage(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; a :class:`NonFiniteError` raised inside names ``what``."""
    try:
        return fn(*args, **kwargs)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{what} stopped: {exc}") from exc


@contextlib.contextmanager
def _marked_if_stopped(run_dir: Path) -> Iterator[None]:
    """A run stopped on a non-finite number leaves :data:`~privbench.card.STOPPED` (why) in its
    folder in place of a card, so no leaderboard, sweep or ``--resume`` takes it for a run in
    progress."""
    try:
        yield
    except NonFiniteError as exc:
        cards.write_json_atomic(run_dir / cards.STOPPED, {"stopped": "non-finite", "message": str(exc),
                                                          "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        raise


@contextlib.contextmanager
def _interruptible(run_dir: Path | None) -> Iterator[None]:
    """Turn Ctrl-C into :class:`Interrupted`, saying what is kept and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        if run_dir is None:
            raise Interrupted("interrupted; the card was not changed") from None
        if (run_dir / engine.CHECKPOINT).exists():
            raise Interrupted(f"interrupted; {run_dir} keeps its last checkpoint: continue with the "
                              f"same command and --resume") from None
        raise Interrupted(f"interrupted before the first checkpoint; {run_dir} holds no training "
                          f"to resume") from None


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send privbench's log records to ``path`` for the duration of a run."""
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise PrivbenchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    except Exception as exc:
        log.error("run failed: %s", exc)
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()
