"""Registries of tasks, defenses and attacks, in the style of timm's model registry.

A component registers itself with a decorator and is found again by name::

    @register_defense("mixup", description="...", paper="Kim et al., IPMI 2023",
                      requires=("reference pool",))
    class MixupDefense(Defense): ...

    list_defenses("mix*")        # -> ["mixup"]
    create_defense("mixup", **kwargs)

A component declares its config dataclass with ``config=``: the registry gives it a section of
the run config (``--set mixup.tta=10``), its presets, validation and a place in the config hash
(:mod:`privbench.config`).

Built-in components live in ``privbench.tasks``, ``privbench.defenses`` and
``privbench.attacks``: every module of those packages is imported on first use, so adding one
is adding its file. Third-party packages add their own
through the entry-point groups ``privbench.tasks``, ``privbench.defenses`` and
``privbench.attacks``: each entry point names a module or object to import; importing it
should register the component (an object that is callable but not yet registered is
registered under the entry point's name, described by its docstring).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import pkgutil
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

from privbench.errors import PrivbenchError


class UnknownNameError(PrivbenchError, KeyError):
    """An unknown task, defense or attack name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One registered component: how to build it and what it needs."""

    name: str
    kind: str
    factory: Callable[..., Any]
    description: str
    paper: str = ""
    requires: tuple[str, ...] = ()
    source: str = "privbench"
    sections: tuple[tuple[str, type], ...] = ()  # its config sections: (name, dataclass)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # run-level values it sets, by preset
    published: dict[str, float] = field(default_factory=dict)  # numbers its paper reports, e.g. {"reid_f1": 0.092}


@dataclass
class Registry:
    """Name -> :class:`Entry` for one kind of component, with lazy built-in and plugin loading."""

    kind: str
    builtin_module: str
    entry_point_group: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _loaded: bool = False

    def register(
        self,
        name: str,
        *,
        description: str,
        paper: str = "",
        requires: Iterable[str] = (),
        config: type | dict[str, type] | None = None,
        defaults: dict[str, dict[str, Any]] | None = None,
        published: dict[str, float] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a class or factory function under ``name``, with its config:
        one dataclass (its section is the name, ``-`` read as ``_``; an attack's is
        ``attack.<name>``) or several sections by name (``{"adversary": AdversaryConfig}``);
        a task's ``defaults`` are run-level values it sets under the user's, by preset
        (``"*"``: every preset), e.g. ``{"paper": {"train.patch_size": 64}}``; ``published``: the
        numbers a paper reports for it (``{"reid_f1": 0.092}``), the levels the comparison at
        matched privacy holds it to (:mod:`privbench.matched`)."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, self.kind, factory, description, paper, tuple(requires),
                           _origin(factory), self.sections_of(name, config), dict(defaults or {}),
                           dict(published or {})))
            return factory

        return decorator

    def sections_of(self, name: str, config: type | dict[str, type] | None) -> tuple[tuple[str, type], ...]:
        """The config sections a component called ``name`` declares with ``config``."""
        if config is None:
            return ()
        if isinstance(config, dict):
            return tuple(config.items())
        section = name.replace("-", "_")
        return ((f"attack.{section}" if self.kind == "attack" else section, config),)

    def add(self, entry: Entry) -> None:
        """Add an entry; registering a different factory under a taken name is an error. The
        same definition imported again (its module reloaded, or reached as an installed plugin
        and from its source tree) is the same component: the newer import replaces the entry."""
        old = self._entries.get(entry.name)
        if old is not None and old.factory is not entry.factory and _defined_at(old.factory) != _defined_at(entry.factory):
            raise ValueError(f"{self.kind} {entry.name!r} is already registered by {old.source}")
        self._entries[entry.name] = entry

    def names(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """Sorted registered names matching one or several shell-style wildcard patterns."""
        self._load()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return sorted(n for n in self._entries if any(fnmatch.fnmatchcase(n, p) for p in patterns))

    def entries(self, pattern: str | Iterable[str] = "*") -> list[Entry]:
        """Entries whose names match ``pattern``, sorted by name."""
        return [self._entries[n] for n in self.names(pattern)]

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name raises with a "did you mean" hint."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        available = ", ".join(known) if known else "none"
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (available: {available})")

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component called ``name`` with ``kwargs``."""
        return self.get(name).factory(**kwargs)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin_module)
        for module in pkgutil.iter_modules(package.__path__):  # a new module needs no import line
            importlib.import_module(f"{self.builtin_module}.{module.name}")
        for ep in entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break privbench
                warnings.warn(f"could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}",
                              stacklevel=2)
                continue
            if ep.name not in self._entries and callable(obj):
                doc = (obj.__doc__ or "").strip().splitlines()
                self.add(Entry(ep.name, self.kind, obj, doc[0] if doc else "",
                               getattr(obj, "paper", ""), tuple(getattr(obj, "requires", ())),
                               ep.value, self.sections_of(ep.name, getattr(obj, "Config", None))))


def _defined_at(factory: Callable[..., Any]) -> tuple[str, int, str]:
    """Where a factory is defined: its source file (module name where there is none), line and
    name."""
    try:
        return (str(Path(inspect.getfile(factory)).resolve()), inspect.getsourcelines(factory)[1],
                factory.__qualname__)
    except (TypeError, OSError, AttributeError):
        return getattr(factory, "__module__", "") or "?", 0, repr(factory)


def _origin(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", "") or ""
    return module.split(".")[0] or "?"  # "privbench" for built-ins, a plugin's package otherwise


TASKS = Registry("task", "privbench.tasks", "privbench.tasks")
DEFENSES = Registry("defense", "privbench.defenses", "privbench.defenses")
ATTACKS = Registry("attack", "privbench.attacks", "privbench.attacks")
REGISTRIES = {"tasks": TASKS, "defenses": DEFENSES, "attacks": ATTACKS}


def all_sections() -> dict[str, type]:
    """Every config section the registered components declare; a section name claimed by two
    components with different dataclasses is an error (sharing one dataclass is allowed)."""
    out: dict[str, type] = {}
    owner: dict[str, str] = {}
    for registry in REGISTRIES.values():
        for entry in registry.entries():
            for name, kind in entry.sections:
                if out.setdefault(name, kind) is not kind:
                    raise ValueError(f"config section {name!r} of {entry.kind} {entry.name!r} ({entry.source}) "
                                     f"clashes with the one of {owner[name]}")
                owner.setdefault(name, f"{entry.kind} {entry.name!r} ({entry.source})")
    return out

register_task = TASKS.register
register_defense = DEFENSES.register
register_attack = ATTACKS.register
list_tasks = TASKS.names
list_defenses = DEFENSES.names
list_attacks = ATTACKS.names
create_task = TASKS.create
create_defense = DEFENSES.create
create_attack = ATTACKS.create
