"""Typed run configuration, presets and ``--set key=value`` overrides.

A run is described by one :class:`RunConfig`. It starts from a preset (``test``, ``quick``,
``paper``), then ``--set`` overrides are applied by dotted key (``train.iterations=500``,
``task.spacing=1``, ``seed=3``). Values are parsed by the field's type; unknown keys and bad
values raise :class:`~privbench.errors.PrivbenchError`. :func:`config_hash` fingerprints
everything that can change a result, so cards from equal configs can be compared and an
interrupted run can be resumed.
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
    amp: bool = True  # bfloat16 autocast on CUDA, and on CPUs with native bfloat16 (AMX/AVX512-BF16)


@dataclass
class EvalConfig:
    """Full-volume inference with MONAI's sliding window."""

    sw_overlap: float = 0.25
    sw_batch_size: int = 8


@dataclass
class MixupConfig:
    """Mixup-Privacy (Kim et al., IPMI 2023): mixing weights, loss weights, unmixing net and TTA."""

    a_min: float = 0.0  # training draws a ~ U(a_min, a_max), floored at 1e-3 (the paper: U(0, 1))
    a_max: float = 1.0
    eval_a_min: float = 0.3  # evaluation draws one a per test volume ~ U(eval_a_min, eval_a_max)
    eval_a_max: float = 0.7
    seg_weight: float = 1.0  # weight of S's Dice + CE against the mixed labels
    unmix_weight: float = 1.0  # weight of D's Dice + CE against the target labels
    unmix_features: int = 8  # channels of the unmixing U-Net's first blocks
    tta: int = 4  # K references of the "+TTA" variants (the paper: 10)
    tta_max: int = 4  # the Dice-versus-K curve runs K = 1..tta_max (>= tta, >= 2 for test-retest)
    curve: bool = False  # also measure the utility-privacy curve over fixed a (Dice and the run's attacks)
    curve_a: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the curve's weights
    curve_scans: int = 4  # test scans whose Dice the curve measures at each a


@dataclass
class AdversaryConfig:
    """The Siamese identity discriminator that privacy-net and deformation are trained to fool."""

    weight: float = 1.0  # lambda: encoder and segmenter minimise segmentation - lambda * discriminator BCE
    features: tuple[int, ...] = (8, 16, 32, 64)  # widths of its conv blocks (each halves the patch)


@dataclass
class PrivacyNetConfig:
    """Privacy-Net (Kim et al., IEEE TMI 2021): the client's encoder."""

    encoder_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)  # the encoder U-Net's widths (MONAI BasicUNet)


@dataclass
class DeformationConfig:
    """Deformation-Proxy (Kim et al., BMVC 2021): the client's flow-field generator."""

    max_velocity_mm: float = 8.0  # bound of each velocity component (tanh); displacements stay within it
    control_spacing_mm: float = 16.0  # distance between the velocity field's control points
    noise_channels: int = 8  # Gaussian noise per control point, drawn from the key's seed
    generator_features: int = 32  # width of the generator's layers
    integration_steps: int = 7  # scaling-and-squaring steps (the field is split into 2^steps)


@dataclass
class ReidConfig:
    """MS-SSIM re-identification (Kim et al., IPMI 2023, Table 2)."""

    observe: str = "proxy"  # proxy: what the server receives | output: what it returns


@dataclass
class BssConfig:
    """Blind source separation of a mixture: NCSN score model + annealed Langevin dynamics."""

    iterations: int = 600  # score-model training on the public pool's patches (the paper: 100k)
    batch_size: int = 4  # the paper: 16
    lr: float = 5e-4  # Adam, as in the paper
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # the score U-Net++'s widths
    num_sigmas: int = 20  # geometric noise levels from sigma_1 (largest patch distance) to sigma_min
    sigma_min: float = 0.01
    ema: float = 0.999  # decay of the weights' exponential moving average (used for sampling)
    steps_per_level: int = 5  # Langevin steps T per noise level
    step_lr: float = 2e-5  # eta_i = step_lr * sigma_i^2 / sigma_min^2
    gamma_scale: float = 1.0  # gamma_i = gamma_scale * sigma_i, the mixture constraint's width
    final_denoise: bool = True  # one last Tweedie step x += sigma_min^2 * score(x, sigma_min)
    start_sigma: float = 1.0  # > 0: sample only the levels <= this, both sources starting at the
    # mixture (a warm start for short CPU budgets); 0: every level from sigma_1, uniform start
    known_a: bool = True  # the attacker knows a (strongest case); else it assumes a = 0.5
    n_patches: int = 8  # test patches separated (each from another test scan when there are enough)
    n_inits: int = 3  # random initialisations shown in the figure


@dataclass
class TtaAverageConfig:
    """Averaging the K mixtures of a reference-TTA request (privbench's audit beyond the paper)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 30)  # K values scored (those the reference pool allows), plus mixup.tta
    prior_a: float = 0.5  # the attacker's guess of a when K = 1 (no spread to estimate it from)


@dataclass
class AttackConfig:
    """Settings of each attack, by attack name (``tta_average`` is the ``tta-average`` attack)."""

    reid: ReidConfig = field(default_factory=ReidConfig)
    bss: BssConfig = field(default_factory=BssConfig)
    tta_average: TtaAverageConfig = field(default_factory=TtaAverageConfig)


@dataclass
class RunConfig:
    """Everything that defines one run: task, defense, seed, training and evaluation."""

    defense: str = "none"
    attacks: tuple[str, ...] = ()  # attacks run against the trained defense (--attack, repeatable)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    preset: str = "quick"
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    privacy_net: PrivacyNetConfig = field(default_factory=PrivacyNetConfig)
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a laptop CPU: the test suite's end-to-end runs
    "test": {
        "task.spacing": 4.0, "task.n_subjects": 8, "task.min_scans": 2, "task.max_scans": 3,
        "task.reference_subjects": 2, "task.max_test_scans": 2,
        "train.iterations": 3, "train.batch_size": 2, "train.patch_size": 32,
        "train.features": (8, 8, 16, 16, 32, 8), "train.checkpoint_every": 2,
        "eval.sw_batch_size": 4, "mixup.unmix_features": 4, "mixup.tta": 2, "mixup.tta_max": 3,
        "attack.bss.iterations": 3, "attack.bss.features": (8, 8, 16, 16, 32, 8),
        "attack.bss.num_sigmas": 4, "attack.bss.steps_per_level": 2, "attack.bss.n_patches": 2,
        "attack.bss.n_inits": 2, "adversary.features": (4, 8, 8, 16),
        "privacy_net.encoder_features": (4, 4, 8, 8, 16, 4), "deformation.generator_features": 8,
        "mixup.curve_a": (0.3, 0.7), "mixup.curve_scans": 1,
    },
    # the default: a whole run in under ten minutes on two CPU cores (2 mm cohort)
    "quick": {},
    # the paper's settings (DESIGN.md): PPMI-sized cohort at 1 mm, 200k iterations, Adam 1e-4
    "paper": {
        "task.spacing": 1.0, "task.n_subjects": 350, "task.min_scans": 2, "task.max_scans": 3,
        "task.test_fraction": 0.23, "task.public_fraction": 0.15, "task.reference_subjects": 50,
        "train.iterations": 200_000, "train.batch_size": 4, "train.patch_size": 32,
        "train.lr": 1e-4, "train.features": (32, 32, 64, 128, 256, 32),
        "train.checkpoint_every": 5_000, "mixup.tta": 10, "mixup.tta_max": 30,
        "mixup.unmix_features": 16, "attack.bss.iterations": 100_000, "attack.bss.batch_size": 16,
        "attack.bss.features": (32, 32, 64, 128, 256, 32), "attack.bss.num_sigmas": 232,
        "attack.bss.n_patches": 64, "attack.bss.start_sigma": 0.0,
        "adversary.features": (16, 32, 64, 128),
        "privacy_net.encoder_features": (32, 32, 64, 128, 256, 32),
    },
}

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")

# a task's own defaults, applied over the preset ("*": every preset) and under --set overrides
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "mni-tumor": {"*": {"train.foreground_fraction": 0.33}, "paper": {"train.patch_size": 64}},
    "brats2021": {"*": {"train.foreground_fraction": 0.33, "task.test_fraction": 0.2},
                  "paper": {"train.patch_size": 64}},  # the paper's BraTS patches
}

# fields that do not change results, left out of the hash
_UNHASHED = {"device", "preset", "eval.sw_batch_size", "train.checkpoint_every", "task.cache_dir"}


def resolve(preset: str = "quick", overrides: list[str] | dict[str, Any] | None = None,
            **top: Any) -> RunConfig:
    """Build a :class:`RunConfig` from a preset, then ``key=value`` overrides.

    Between the preset and the overrides come the task's own defaults (:data:`TASK_DEFAULTS`).
    ``overrides`` is a list of ``"key=value"`` strings (as typed after ``--set``) or a dict
    of already-typed values; ``top`` sets top-level or dotted fields by keyword (used by the
    CLI for ``--defense``, ``--seed`` ...; ``None`` values are ignored).
    """
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrivbenchError(f"unknown preset {preset!r}{hint} (available: {', '.join(PRESETS)})")
    items = list(overrides.items() if isinstance(overrides, dict) else map(_split, overrides or []))
    cfg = _build(preset, {}, top, items)
    defaults = TASK_DEFAULTS.get(cfg.task.name, {})
    if defaults:  # rebuilt, so that the task's defaults sit under the user's choices
        cfg = _build(preset, {**defaults.get("*", {}), **defaults.get(preset, {})}, top, items)
    validate(cfg)
    return cfg


def _build(preset: str, task_defaults: dict[str, Any], top: dict[str, Any],
           items: list[tuple[str, Any]]) -> RunConfig:
    cfg = RunConfig(preset=preset)
    for key, value in [*PRESETS[preset].items(), *task_defaults.items()]:
        set_value(cfg, key, value)
    for key, value in top.items():
        if value is not None:
            set_value(cfg, key, value)
    for key, value in items:
        set_value(cfg, key, value)
    return cfg


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise PrivbenchError(f"bad --set {item!r}: expected key=value, e.g. train.iterations=500")
    return key.strip(), value.strip()


def keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """All dotted keys of a config (the names ``--set`` accepts)."""
    cfg = RunConfig() if cfg is None else cfg
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value``, parsing strings by the field's type."""
    *parents, leaf = key.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            break
    types = typing.get_type_hints(type(node)) if dataclasses.is_dataclass(node) else {}
    if leaf not in types or dataclasses.is_dataclass(getattr(node, leaf)):
        close = difflib.get_close_matches(key, keys(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrivbenchError(f"unknown config key {key!r}{hint}")
    setattr(node, leaf, _parse(key, value, types[leaf]))


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
    """Reject values that cannot work, with the key that is wrong. Every float setting is
    finite (:func:`_parse`) and bounded on both sides here."""
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
        (0 <= cfg.mixup.a_min <= cfg.mixup.a_max <= 1, "mixup.a_min <= mixup.a_max must lie in [0, 1]"),
        (0 < cfg.mixup.eval_a_min <= cfg.mixup.eval_a_max <= 1,
         "mixup.eval_a_min <= mixup.eval_a_max must lie in (0, 1]"),
        (0 <= cfg.mixup.seg_weight <= MAX_WEIGHT and 0 <= cfg.mixup.unmix_weight <= MAX_WEIGHT,
         f"mixup.seg_weight and mixup.unmix_weight must be in [0, {MAX_WEIGHT:g}]"),
        (cfg.mixup.unmix_features >= 1, "mixup.unmix_features must be >= 1"),
        (1 <= cfg.mixup.tta <= cfg.mixup.tta_max and cfg.mixup.tta_max >= 2,
         "mixup.tta must be >= 1 and <= mixup.tta_max, and mixup.tta_max >= 2 (test-retest)"),
        (len(cfg.mixup.curve_a) >= 1 and all(0 < a <= 1 for a in cfg.mixup.curve_a) and cfg.mixup.curve_scans >= 1,
         "mixup.curve_a must be weights in (0, 1] and mixup.curve_scans >= 1"),
        (0 <= cfg.adversary.weight <= MAX_WEIGHT, f"adversary.weight (lambda) must be in [0, {MAX_WEIGHT:g}]"),
        (len(cfg.adversary.features) >= 1 and min(cfg.adversary.features) >= 1
         and cfg.train.patch_size % 2 ** len(cfg.adversary.features) == 0,
         "adversary.features must be positive ints, one block per halving of train.patch_size"),
        (len(cfg.privacy_net.encoder_features) == 6 and min(cfg.privacy_net.encoder_features) >= 1,
         "privacy_net.encoder_features must be 6 positive ints (BasicUNet)"),
        (0 <= cfg.deformation.max_velocity_mm <= MAX_MM, f"deformation.max_velocity_mm must be in [0, {MAX_MM}]"),
        (cfg.task.spacing <= cfg.deformation.control_spacing_mm <= MAX_MM,
         f"deformation.control_spacing_mm must be in [task.spacing, {MAX_MM}]"),
        (min(cfg.deformation.noise_channels, cfg.deformation.generator_features,
             cfg.deformation.integration_steps) >= 1,
         "deformation.noise_channels, generator_features and integration_steps must be >= 1"),
        (cfg.attack.reid.observe in ("proxy", "output"), "attack.reid.observe must be proxy or output"),
        (cfg.attack.bss.iterations >= 0 and cfg.attack.bss.batch_size >= 1 and 0 < cfg.attack.bss.lr <= 1,
         "attack.bss.iterations must be >= 0, batch_size >= 1 and lr in (0, 1]"),
        (len(cfg.attack.bss.features) == 6 and min(cfg.attack.bss.features) >= 1,
         "attack.bss.features must be 6 positive ints (BasicUNetPlusPlus)"),
        (cfg.attack.bss.num_sigmas >= 2 and 0 < cfg.attack.bss.sigma_min <= 1, "attack.bss.num_sigmas must be "
         ">= 2 and attack.bss.sigma_min in (0, 1]"),
        (0 <= cfg.attack.bss.ema < 1, "attack.bss.ema must be in [0, 1)"),
        (cfg.attack.bss.steps_per_level >= 1 and 0 < cfg.attack.bss.step_lr <= 1
         and 0 < cfg.attack.bss.gamma_scale <= MAX_WEIGHT,
         f"attack.bss.steps_per_level must be >= 1, step_lr in (0, 1] and gamma_scale in (0, {MAX_WEIGHT:g}]"),
        (0 <= cfg.attack.bss.start_sigma <= MAX_SIGMA, f"attack.bss.start_sigma must be in [0, {MAX_SIGMA}]"),
        (cfg.attack.bss.n_patches >= 1 and cfg.attack.bss.n_inits >= 1,
         "attack.bss.n_patches and attack.bss.n_inits must be >= 1"),
        (len(cfg.attack.tta_average.ks) >= 1 and min(cfg.attack.tta_average.ks) >= 1,
         "attack.tta_average.ks must be positive ints"),
        (0 < cfg.attack.tta_average.prior_a <= 1, "attack.tta_average.prior_a must be in (0, 1]"),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         "device must be auto, cpu, cuda or cuda:N"),
    ]
    for ok, message in checks:
        if not ok:
            raise PrivbenchError(message)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a config written by :func:`to_dict` (e.g. from a card)."""
    cfg = RunConfig()
    for key, value in _flatten(data).items():
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


# sections read by some defenses only: they change the hash of those defenses' runs alone
_DEFENSE_SECTIONS = {"mixup": ("mixup",), "privacy-net": ("privacy_net", "adversary"),
                     "deformation": ("deformation", "adversary")}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_hash(cfg: RunConfig) -> str:
    """Short SHA-256 of every result-changing field (device, preset name, cache path, and the
    sections of defenses and attacks the run does not use excluded)."""
    own = _DEFENSE_SECTIONS.get(cfg.defense, ())
    foreign = {f"{section}." for sections in _DEFENSE_SECTIONS.values() for section in sections
               if section not in own}
    foreign |= {f"attack.{name}." for name in _fields(AttackConfig) if name.replace("_", "-") not in cfg.attacks}
    unhashed = _UNHASHED | (set() if cfg.attacks else {"attacks"})
    flat = {k: v for k, v in _flatten(to_dict(cfg)).items()
            if k not in unhashed and not k.startswith(tuple(foreign))}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
