"""Grids of runs: task × defense × seed × values of ``--set`` keys, every cell an ordinary run.

A cell whose card already exists for the same config hash is skipped, an unfinished one
(checkpoint, no card) resumes, and a cell that fails is reported without stopping the others.
Cells run one after another in this process (``engine="local"``; a CPU run already uses every
core), or as Ray tasks (``engine="ray"``): ``ray.init()`` starts a local Ray, an ``address``
(or ``RAY_ADDRESS``) joins a cluster, and each cell asks for one GPU where the driver sees
CUDA, otherwise ``cpus_per_cell`` CPUs. Ray is the optional extra ``privbench[ray]``, imported
only for that engine.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privbench import config
from privbench.card import CARD, STOPPED, find_resumable
from privbench.errors import Interrupted, PrivbenchError


@dataclass
class Grid:
    """What to sweep: every combination of ``tasks``, ``defenses``, ``seeds`` and the values in
    ``vary`` (``key -> [values]``), each with ``attacks`` and the fixed ``sets``."""

    tasks: list[str] = field(default_factory=lambda: ["mni-tissue"])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    attacks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str = "quick"
    sets: dict[str, Any] = field(default_factory=dict)
    vary: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its overrides and resolved config hash."""

    task: str
    defense: str
    seed: int
    values: tuple[tuple[str, Any], ...]  # this cell's choice for every varied key

    def config(self, grid: Grid) -> config.RunConfig:
        return config.resolve(grid.preset, {**grid.sets, **self.settings(), "task.name": self.task},
                              defense=self.defense, seed=self.seed, attacks=tuple(grid.attacks))

    def settings(self) -> dict[str, Any]:
        """This cell's values by key; a key joining several with commas (``"a,b"``) takes a list
        of as many values, one each (keys that vary together)."""
        out: dict[str, Any] = {}
        for key, value in self.values:
            names = [name.strip() for name in key.split(",")]
            if len(names) == 1:
                out[key] = value
                continue
            if not isinstance(value, (list, tuple)) or len(value) != len(names):
                raise PrivbenchError(f"the grid's {key!r} varies {len(names)} keys together: each of its "
                                     f"values must be a list of {len(names)}, not {value!r}")
            out |= dict(zip(names, value))
        return out

    def label(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.task}/{self.defense} seed {self.seed}" + (f" {extra}" if extra else "")


@dataclass
class Outcome:
    """What happened to one cell: ``done``, ``skipped`` (its card existed), ``resumed`` or
    ``failed`` (with the error), and its run folder."""

    cell: Cell
    status: str
    run_dir: str = ""
    error: str = ""


def load_grid(path: str | Path) -> Grid:
    """A grid from a TOML file: a ``[grid]`` table with ``tasks``, ``defenses``, ``attacks``,
    ``seeds``, ``preset``, and the tables ``[grid.set]`` (fixed values) and ``[grid.vary]``
    (lists of values)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PrivbenchError(f"cannot read the grid {path}: {exc}") from None
    table = data.get("grid")
    if not isinstance(table, dict):
        raise PrivbenchError(f"{path} has no [grid] table")
    unknown = set(table) - {"tasks", "defenses", "attacks", "seeds", "preset", "set", "vary"}
    if unknown:
        raise PrivbenchError(f"{path}: unknown grid entries {sorted(unknown)} (known: tasks, defenses, attacks, "
                             "seeds, preset, set, vary)")
    expected = {"tasks": (list, str, "a list of names"), "defenses": (list, str, "a list of names"),
                "attacks": (list, str, "a list of names"), "seeds": (list, int, "a list of integers"),
                "preset": (str, None, "a preset name"), "set": (dict, None, "a table of key = value"),
                "vary": (dict, None, "a table of key = [values]")}
    for key, (kind, item, what) in expected.items():
        value = table.get(key)
        if value is None:
            continue
        items = value.values() if isinstance(value, dict) else value
        if not isinstance(value, kind) or (item is not None and isinstance(value, (list, dict)) and not all(
                isinstance(v, item) and not isinstance(v, bool) for v in items)):
            raise PrivbenchError(f"{path}: [grid] {key} must be {what}, not {value!r}")
    grid = Grid(preset=table.get("preset", "quick"), sets=dict(table.get("set", {})),
                vary={k: list(v) if isinstance(v, list) else [v] for k, v in table.get("vary", {}).items()})
    for name in ("tasks", "defenses", "attacks", "seeds"):
        if name in table:
            setattr(grid, name, list(table[name]))
    return grid


def cells(grid: Grid) -> list[Cell]:
    """Every cell of the grid, each checked (a bad name or value stops the sweep before any run)."""
    from privbench.registry import ATTACKS, DEFENSES, TASKS

    for registry, names in ((TASKS, grid.tasks), (DEFENSES, grid.defenses), (ATTACKS, grid.attacks)):
        for name in names:
            registry.get(name)  # an unknown name stops here, with did-you-mean
    keys = list(grid.vary)
    out = []
    for task, defense, seed, *values in itertools.product(grid.tasks, grid.defenses, grid.seeds,
                                                          *(grid.vary[k] for k in keys)):
        cell = Cell(task, defense, int(seed), tuple((k, tuple(v) if isinstance(v, list) else v)
                                                    for k, v in zip(keys, values)))
        cell.config(grid)  # validates: raises PrivbenchError naming the bad part
        out.append(cell)
    if not out:
        raise PrivbenchError("the grid is empty: give at least one task, defense and seed")
    return out


def state(cfg: config.RunConfig, out: Path) -> tuple[str, Path | None]:
    """``finished`` (a card of this config hash exists), ``stopped`` (a run of it stopped on a
    non-finite number: rerun, it would stop again), ``unfinished`` (a checkpoint without a card)
    or ``new``, with the run folder where there is one."""
    digest = config.config_hash(cfg)
    parent = out / cfg.task.name / cfg.defense
    for kind, marker in (("finished", CARD), ("stopped", STOPPED)):
        found = sorted(parent.glob(f"*-{digest}*/{marker}")) if parent.is_dir() else []
        if found:
            return kind, found[-1].parent
    resumable = find_resumable(out, cfg.task.name, cfg.defense, digest)
    return ("unfinished", resumable) if resumable else ("new", None)


def run_cell(cell: Cell, grid: Grid, out: str | Path, progress: bool = False) -> Outcome:
    """Run, resume or skip one cell; any error becomes a ``failed`` outcome."""
    from privbench import runner

    out = Path(out)
    try:
        cfg = cell.config(grid)
        kind, run_dir = state(cfg, out)
        if kind == "finished":
            return Outcome(cell, "skipped", str(run_dir))
        if kind == "stopped":
            return Outcome(cell, "failed", str(run_dir), f"it stopped on a non-finite number before (see "
                                                         f"{run_dir / STOPPED}); change its settings to run it again")
        result = runner.run(cfg, out=out, resume=kind == "unfinished", progress=progress)
        return Outcome(cell, "resumed" if kind == "unfinished" else "done", str(result.run_dir))
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C stops the sweep; the cell keeps its checkpoint
        raise
    except Exception as exc:  # noqa: BLE001  (one failed cell must not stop the others)
        return Outcome(cell, "failed", error=f"{type(exc).__name__}: {exc}")


def writable(out: Path) -> None:
    """Make ``out`` if missing; :class:`PrivbenchError` unless it is a folder privbench can write."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrivbenchError(f"cannot put the runs in {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PrivbenchError(f"cannot put the runs in {out}: the folder is not writable")


def run(grid: Grid, out: str | Path, *, engine: str = "local", address: str | None = None,
        cpus_per_cell: int = 2, progress: bool = False) -> list[Outcome]:
    """Run every cell of the grid (see the module); the outcomes, in the grid's order. A folder
    for the runs that cannot be made or written is refused before the first cell."""
    todo = cells(grid)
    writable(Path(out))
    if engine == "local":
        return [run_cell(cell, grid, out, progress) for cell in todo]
    if engine == "ray":
        return _run_on_ray(todo, grid, out, address, cpus_per_cell)
    raise PrivbenchError(f"unknown engine {engine!r}: choose local or ray")


def _run_on_ray(todo: list[Cell], grid: Grid, out: str | Path, address: str | None,
                cpus_per_cell: int) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise PrivbenchError("--engine ray needs Ray: pip install 'privbench[ray]'") from None
    import torch

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        resources = {"num_gpus": 1} if torch.cuda.is_available() else {"num_cpus": cpus_per_cell}
        remote = ray.remote(**resources)(run_cell)
        return ray.get([remote.remote(cell, grid, str(Path(out).resolve())) for cell in todo])
    finally:
        if started:
            ray.shutdown()


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    """How many cells ended in each status."""
    return {status: sum(o.status == status for o in outcomes) for status in ("done", "resumed", "skipped", "failed")}
