"""Typed run configuration, presets and ``--set key=value`` overrides.

A run is described by one :class:`RunConfig`: the run-level sections (``task``, ``train``,
``eval``, the seed, the device) defined here, and one section per registered component, which
each component declares beside its code and registers with it (``register_defense(...,
config=MixupConfig)`` gives the section ``mixup``; an attack's section is ``attack.<name>``).
A config starts from a preset (``test``, ``quick``, ``paper``; a section's own values for a
preset are its ``PRESETS``), then ``--set`` overrides are applied by dotted key
(``train.iterations=500``, ``mixup.tta=10``, ``attack.bss.iterations=50``, ``seed=3``).
Values are parsed by the field's type; unknown keys and bad values raise
:class:`~privbench.errors.PrivbenchError`; each section validates itself (``validate(run)``).
:func:`config_hash` fingerprints the run-level sections and exactly the sections of the
components the run uses, so cards from equal configs can be compared and an interrupted run
can be resumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from privbench.errors import PrivbenchError


@dataclass
class TaskConfig:
    """Which dataset, at which resolution, and how the embedded cohort is generated and split."""

    name: str = "mni-tissue"
    spacing: float = 2.0  # mm; 1.0 gives 144x192x160 volumes, 2.0 gives 72x96x80
    root: str = ""  # ppmi, brats2021: the folder holding the user's local copy
    split_file: str = ""  # ppmi, brats2021: a CSV "subject,role" (train | test | public) instead of a seeded split
    modality: str = "t1ce"  # brats2021: which scan is the input (t1, t1ce, t2, flair)
    on_bad_scan: str = "error"  # ppmi, brats2021: error (stop, naming the file) | skip (list it in the card)
    n_subjects: int = 32
    min_scans: int = 2  # scans per subject, drawn uniformly from [min_scans, max_scans]
    max_scans: int = 4
    test_fraction: float = 0.25  # of subjects
    public_fraction: float = 0.2  # of subjects: the attacker's public pool
    reference_subjects: int = 6  # training subjects whose labelled scans form the client's reference pool
    max_test_scans: int = 0  # evaluate on at most this many test scans (0: all)
    validation_subjects: int = 2  # public subjects whose first scan scores training progress (0: none)
    cohort_seed: int = 0  # seed of the synthetic cohort and of the subject split, independent of the run's seed
    cache_dir: str = ""  # "" -> $PRIVBENCH_CACHE or ~/.cache/privbench


@dataclass
class TrainConfig:
    """Optimisation of the defense's networks (random patches, DiceCE, Adam)."""

    iterations: int = 1000
    batch_size: int = 2
    patch_size: int = 32  # cubic patches; U-Net++ needs a multiple of 16, instance norm >= 32
    lr: float = 1e-3
    lr_schedule: str = "poly"  # constant | poly: lr * (1 - iteration / iterations) ** 0.9 (nnU-Net)
    foreground_fraction: float = 0.0  # share of patches centred on a foreground voxel (nnU-Net: 0.33)
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # MONAI BasicUNetPlusPlus widths
    checkpoint_every: int = 100
    validate_every: int = 100  # score the validation scans every this many iterations (0: never)
    workers: int = -1  # processes making batches ahead of the step: -1 auto (0 on CPU, up to 8 on CUDA), 0 none
    channels_last: bool = False  # the networks' weights in channels-last 3D memory format
    compile: bool = False  # torch.compile the networks' forward (off: it did not pay where measured)
    amp: bool = True  # bfloat16 autocast on CUDA, and on CPUs with native bfloat16 (AMX/AVX512-BF16)


@dataclass
class EvalConfig:
    """Full-volume inference with MONAI's sliding window."""

    sw_overlap: float = 0.25
    sw_batch_size: int = 8


@dataclass
class RunConfig:
    """Everything that defines one run: task, defense, seed, training, evaluation, and the
    registered components' sections (``cfg.mixup``, ``cfg.attack.bss``: see :attr:`sections`)."""

    defense: str = "none"
    attacks: tuple[str, ...] = ()  # attacks run against the trained defense (--attack, repeatable)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    preset: str = "quick"
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sections: dict[str, Any] = field(default_factory=lambda: {name: kind() for name, kind in
                                                              component_sections().items()})

    def __getattr__(self, name: str) -> Any:
        """A component's section by attribute: ``cfg.mixup``, ``cfg.attack.bss``."""
        sections = self.__dict__.get("sections")
        if name.startswith("__") or sections is None:
            raise AttributeError(name)
        if name in sections:
            return sections[name]
        if any(key.startswith(f"{name}.") for key in sections):
            return SectionGroup(sections, f"{name}.")
        raise AttributeError(f"RunConfig has no field or section {name!r}")


class SectionGroup:
    """The sections under one prefix, by attribute (``cfg.attack.bss`` is section ``attack.bss``)."""

    def __init__(self, sections: dict[str, Any], prefix: str):
        self._sections, self._prefix = sections, prefix

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_sections"][self.__dict__["_prefix"] + name]
        except KeyError:
            raise AttributeError(name) from None


RUN_SECTIONS = ("task", "train", "eval")
RUN_FIELDS = ("defense", "attacks", "seed", "device", "preset")


def component_sections() -> dict[str, type]:
    """Every registered component's config section: name -> dataclass (from the registries)."""
    from privbench.registry import all_sections  # components import this module: no import at load

    return all_sections()


def require(*checks: tuple[bool, str]) -> None:
    """Raise :class:`PrivbenchError` with the message of the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise PrivbenchError(message)


PRESETS: dict[str, dict[str, Any]] = {  # run-level values; each section keeps its own in its PRESETS
    # seconds on a laptop CPU: the test suite's end-to-end runs
    "test": {
        "task.spacing": 4.0, "task.n_subjects": 8, "task.min_scans": 2, "task.max_scans": 3,
        "task.reference_subjects": 2, "task.max_test_scans": 2,
        "train.iterations": 3, "train.batch_size": 2, "train.patch_size": 32,
        "train.features": (4, 4, 8, 8, 16, 4), "train.checkpoint_every": 2,
        "train.validate_every": 0, "eval.sw_batch_size": 4,
    },
    # the default: a whole run in under ten minutes on two CPU cores (2 mm cohort)
    "quick": {},
    # the regression gate's suite (privbench regress): the test preset's cohort, grown to 4 test
    # and 3 public subjects with all their scans, and enough training for Dice to mean something
    "ci": {
        "task.n_subjects": 12, "task.test_fraction": 0.34, "task.public_fraction": 0.25,
        "task.max_test_scans": 0, "train.iterations": 20, "train.features": (8, 8, 16, 16, 32, 8),
    },
    # the paper's settings (DESIGN.md): PPMI-sized cohort at 1 mm, 200k iterations, Adam 1e-4
    "paper": {
        "task.spacing": 1.0, "task.n_subjects": 350, "task.min_scans": 2, "task.max_scans": 3,
        "task.test_fraction": 0.23, "task.public_fraction": 0.15, "task.reference_subjects": 50,
        "train.iterations": 200_000, "train.batch_size": 4, "train.patch_size": 32,
        "train.lr": 1e-4, "train.features": (32, 32, 64, 128, 256, 32),
        "train.checkpoint_every": 5_000, "train.validate_every": 5_000,
    },
}

PRESET_BASES = {"ci": "test"}  # a preset starts from its base's values (run-level and sections')

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")

# fields that do not change results, left out of the hash (validation only reads the networks:
# training with it is bit-identical to training without it, tests/test_progress.py)
_UNHASHED = {"device", "preset", "eval.sw_batch_size", "train.checkpoint_every", "task.cache_dir",
             "train.validate_every", "task.validation_subjects", "train.workers"}
# fields added later that may change results in the last bits: hashed only when set away from the
# behaviour before them, so the hashes (and --resume) of earlier runs stay valid
_HASHED_WHEN_SET = {"train.channels_last": False, "train.compile": False}


def resolve(preset: str = "quick", overrides: list[str] | dict[str, Any] | None = None,
            **top: Any) -> RunConfig:
    """Build a :class:`RunConfig` from a preset, then ``key=value`` overrides.

    Between the preset and the overrides come the task's own defaults (its registry entry's
    ``defaults``, e.g. mni-tumor's foreground oversampling).
    ``overrides`` is a list of ``"key=value"`` strings (as typed after ``--set``) or a dict
    of already-typed values; ``top`` sets top-level or dotted fields by keyword (used by the
    CLI for ``--defense``, ``--seed`` ...; ``None`` values are ignored).
    """
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrivbenchError(f"unknown preset {preset!r}{hint} (available: {', '.join(PRESETS)})")
    items = list(overrides.items() if isinstance(overrides, dict) else map(split_item, overrides or []))
    cfg = _build(preset, {}, top, items)
    defaults = task_defaults(cfg.task.name, preset)
    if defaults:  # rebuilt, so that the task's defaults sit under the user's choices
        cfg = _build(preset, defaults, top, items)
    validate(cfg)
    return cfg


def task_defaults(name: str, preset: str) -> dict[str, Any]:
    """The run-level values the task ``name`` sets for ``preset`` (none for an unknown task:
    the run refuses it later, with the registry's did-you-mean)."""
    from privbench.registry import TASKS

    if name not in TASKS.names():
        return {}
    defaults = TASKS.get(name).defaults
    return {**defaults.get("*", {}), **defaults.get(preset, {})}


def _build(preset: str, task_defaults: dict[str, Any], top: dict[str, Any],
           items: list[tuple[str, Any]]) -> RunConfig:
    cfg = RunConfig(preset=preset)
    chain = [PRESET_BASES[preset], preset] if preset in PRESET_BASES else [preset]
    for name in chain:
        own = [(f"{section_name}.{key}", value) for section_name, section in cfg.sections.items()
               for key, value in getattr(section, "PRESETS", {}).get(name, {}).items()]
        for key, value in [*PRESETS[name].items(), *own]:
            set_value(cfg, key, value)
    for key, value in task_defaults.items():
        set_value(cfg, key, value)
    for key, value in top.items():
        if value is not None:
            set_value(cfg, key, value)
    for key, value in items:
        set_value(cfg, key, value)
    return cfg


def split_item(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise PrivbenchError(f"bad --set {item!r}: expected key=value, e.g. train.iterations=500")
    return key.strip(), value.strip()


def keys(cfg: RunConfig | None = None) -> list[str]:
    """All dotted keys of a config (the names ``--set`` accepts)."""
    cfg = RunConfig() if cfg is None else cfg
    return [*RUN_FIELDS, *(f"{name}.{f.name}" for name, section in _sections(cfg).items()
                           for f in dataclasses.fields(section))]


def _sections(cfg: RunConfig) -> dict[str, Any]:
    """Every section of ``cfg``, run-level first: name -> dataclass instance."""
    return {**{name: getattr(cfg, name) for name in RUN_SECTIONS}, **cfg.sections}


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value``, parsing strings by the field's type."""
    section, _, leaf = key.rpartition(".")
    sections = _sections(cfg)
    node = cfg if not section and leaf in RUN_FIELDS else sections.get(section)
    types = typing.get_type_hints(type(node)) if node is not None else {}
    if leaf not in types or (node is cfg and leaf not in RUN_FIELDS):
        raise PrivbenchError(_unknown(key, section, sections))
    setattr(node, leaf, _parse(key, value, types[leaf]))


def _unknown(key: str, section: str, sections: dict[str, Any]) -> str:
    """"unknown config key" with a did-you-mean on the section and on the field."""
    if section in sections:
        names = [f.name for f in dataclasses.fields(sections[section])]
        close = difflib.get_close_matches(key.rpartition(".")[2], names, n=1, cutoff=0.6)
        hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
        return f"unknown config key {key!r}{hint} ({section} has {', '.join(names)})"
    close = difflib.get_close_matches(key, keys(), n=1, cutoff=0.6)
    if not close and section:
        near = difflib.get_close_matches(section, list(sections), n=1, cutoff=0.6)
        close = [f"{near[0]}.{key.rpartition('.')[2]}"] if near else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(sections))
    return f"unknown config key {key!r}{hint}" + ("" if hint else f" (sections: {known})")


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _parse(key: str, value: Any, kind: Any) -> Any:
    """Coerce ``value`` (text from the command line, or a typed value) to the field's type."""
    try:
        if typing.get_origin(kind) is tuple:
            items = value.strip("()[] ").split(",") if isinstance(value, str) else value
            item = typing.get_args(kind)[0]
            return tuple(_finite(item(str(v).strip())) for v in items if str(v).strip())
        if isinstance(value, str):
            return _BOOLS[value.lower()] if kind is bool else _finite(kind(value))
        if kind is bool and isinstance(value, bool):
            return value
        if kind in (int, float) and not isinstance(value, bool):
            if kind is int and not float(value).is_integer():
                raise ValueError
            return _finite(kind(value))
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    origin = typing.get_origin(kind) is tuple
    name = f"comma-separated {typing.get_args(kind)[0].__name__}s" if origin else kind.__name__
    raise PrivbenchError(f"bad value for {key}: {value!r} is not a valid {name}"
                         + (" (finite)" if name.endswith(("float", "floats")) else ""))


def _finite(value: Any) -> Any:
    """``value`` itself, unless it is a NaN or infinite float (never a valid setting)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(value)
    return value


SEED_LIMIT = 2**32  # numpy's global seed takes [0, 2**32)
MAX_WEIGHT = 1e3  # loss weights and the like: beyond this a setting is a typo, not an experiment
MAX_MM = 240  # millimetres: the largest field of view of a task (BraTS)
MAX_SIGMA = 100.0  # noise levels of the score model, in units of image intensity ([0, 1])


def validate(cfg: RunConfig) -> None:
    """Reject values that cannot work, with the key that is wrong: the run-level checks here,
    then each section's own ``validate(run)``. Every float setting is finite (:func:`_parse`)
    and bounded on both sides."""
    checks = [
        (cfg.task.spacing in (1.0, 2.0, 4.0), "task.spacing must be 1, 2 or 4 (mm)"),
        (0 <= cfg.seed < SEED_LIMIT, f"seed must be in [0, {SEED_LIMIT - 1}]"),
        (0 <= cfg.task.cohort_seed < SEED_LIMIT, f"task.cohort_seed must be in [0, {SEED_LIMIT - 1}]"),
        (cfg.task.n_subjects >= 4, "task.n_subjects must be at least 4"),
        (1 <= cfg.task.min_scans <= cfg.task.max_scans, "task.min_scans must be >= 1 and <= task.max_scans"),
        (0 < cfg.task.test_fraction < 1, "task.test_fraction must be in (0, 1)"),
        (0 <= cfg.task.public_fraction < 1 - cfg.task.test_fraction,
         "task.public_fraction must be >= 0 and leave subjects for training"),
        (cfg.task.reference_subjects >= 1, "task.reference_subjects must be >= 1"),
        (cfg.task.max_test_scans >= 0, "task.max_test_scans must be >= 0"),
        (cfg.task.validation_subjects >= 0, "task.validation_subjects must be >= 0"),
        (cfg.train.validate_every >= 0, "train.validate_every must be >= 0"),
        (cfg.train.workers >= -1, "train.workers must be -1 (auto), 0 (main thread) or more"),
        (cfg.train.iterations >= 0, "train.iterations must be >= 0"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.patch_size >= 32 and cfg.train.patch_size % 16 == 0,
         "train.patch_size must be a multiple of 16 and at least 32 (U-Net++ downsamples 4 times)"),
        (0 < cfg.train.lr <= 1, "train.lr must be in (0, 1]"),
        (cfg.train.lr_schedule in ("constant", "poly"), "train.lr_schedule must be constant or poly"),
        (0 <= cfg.train.foreground_fraction <= 1, "train.foreground_fraction must be in [0, 1]"),
        (cfg.task.on_bad_scan in ("error", "skip"), "task.on_bad_scan must be error or skip"),
        (cfg.task.modality in BRATS_MODALITIES, f"task.modality must be one of {', '.join(BRATS_MODALITIES)}"),
        (len(cfg.train.features) == 6 and min(cfg.train.features) >= 1,
         "train.features must be 6 positive ints (BasicUNetPlusPlus)"),
        (cfg.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (0 <= cfg.eval.sw_overlap < 1, "eval.sw_overlap must be in [0, 1)"),
        (cfg.eval.sw_batch_size >= 1, "eval.sw_batch_size must be >= 1"),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         "device must be auto, cpu, cuda or cuda:N"),
    ]
    require(*checks)
    for section in cfg.sections.values():
        if hasattr(section, "validate"):
            section.validate(cfg)


def to_dict(cfg: RunConfig, *, used_only: bool = False) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists; ``attack.bss`` nests as
    ``{"attack": {"bss": ...}}``). With ``used_only``, only the run-level sections and those of
    the components the run uses (:func:`used_sections`): what a card records, so that removing
    an unrelated plugin leaves the run readable."""
    data: dict[str, Any] = {name: getattr(cfg, name) for name in RUN_FIELDS}
    used = set(RUN_SECTIONS) | set(used_sections(cfg)) if used_only else None
    for name, section in _sections(cfg).items():
        if used is not None and name not in used:
            continue
        *parents, leaf = name.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = dataclasses.asdict(section)
    return json.loads(json.dumps(data))


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a config written by :func:`to_dict` (e.g. from a card): the values it records over
    its preset's (so a section it does not record, e.g. an attack added later, takes the preset's
    values). Sections of components that are no longer installed (a removed plugin's) are set
    aside; an unknown key of a known section is an error."""
    preset = data.get("preset", "quick")
    task = (data.get("task") or {}).get("name", TaskConfig.name)
    cfg = _build(preset, task_defaults(task, preset), {}, []) if preset in PRESETS else RunConfig()
    known = _sections(cfg)
    for key, value in _flatten(data).items():
        section = key.rpartition(".")[0]
        if section and section not in known and not any(name.startswith(f"{section}.") for name in known):
            continue  # a removed component's section: nothing this code can use
        set_value(cfg, key, value)
    return cfg


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def used_sections(cfg: RunConfig) -> list[str]:
    """The sections of the components the run uses: its task, its defense, its attacks."""
    from privbench.registry import ATTACKS, DEFENSES, TASKS

    entries = [TASKS.get(cfg.task.name), DEFENSES.get(cfg.defense), *map(ATTACKS.get, cfg.attacks)]
    return list(dict.fromkeys(name for entry in entries for name, _ in entry.sections))


def defense_sections(cfg: RunConfig, defense: str | None = None) -> dict[str, Any]:
    """The config sections a defense (default: the run's) declares, as plain data: its public
    description."""
    from privbench.registry import DEFENSES

    entry = DEFENSES.get(defense or cfg.defense)
    return {name: dataclasses.asdict(cfg.sections[name]) for name, _ in entry.sections}


def result_fields(cfg: RunConfig, sections: list[str]) -> dict[str, Any]:
    """The fields of ``sections`` that change results (the hashed ones), flat: ``key -> value``."""
    return {k: v for k, v in _flatten(to_dict(cfg)).items()
            if k.rpartition(".")[0] in sections and k not in _UNHASHED}


def config_hash(cfg: RunConfig) -> str:
    """Short SHA-256 of every result-changing field: the run-level sections (device, preset name,
    cache path and batch sizes of inference excluded) and the sections the run's components
    declare (:func:`used_sections`), never those of components it does not use."""
    used = set(RUN_SECTIONS) | set(used_sections(cfg))
    unhashed = _UNHASHED | (set() if cfg.attacks else {"attacks"})
    flat = {k: v for k, v in _flatten(to_dict(cfg)).items()
            if k not in unhashed and (k in RUN_FIELDS or k.rpartition(".")[0] in used)
            and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
