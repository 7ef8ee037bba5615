import pytest

from privbench import config
from privbench.errors import PrivbenchError


def test_presets_resolve_and_differ():
    quick, test, paper = (config.resolve(p) for p in ("quick", "test", "paper"))
    assert quick.task.spacing == 2.0 and test.task.spacing == 4.0 and paper.task.spacing == 1.0
    assert paper.train.iterations == 200_000 and paper.train.lr == 1e-4 and paper.train.batch_size == 4
    assert paper.train.features == (32, 32, 64, 128, 256, 32)
    assert len({config.config_hash(c) for c in (quick, test, paper)}) == 3


def test_set_overrides_parse_by_type():
    cfg = config.resolve("quick", ["train.iterations=7", "train.lr=0.5", "train.amp=off",
                                   "train.features=8,8,16,16,32,8", "task.name=other", "seed=3"])
    assert cfg.train.iterations == 7 and cfg.train.lr == 0.5 and cfg.train.amp is False
    assert cfg.train.features == (8, 8, 16, 16, 32, 8)
    assert cfg.task.name == "other" and cfg.seed == 3


@pytest.mark.parametrize("item, message", [
    ("train.iteration=5", r"unknown config key 'train.iteration'; did you mean 'train.iterations'\?"),
    ("nokey", "expected key=value"),
    ("train.iterations=abc", "bad value for train.iterations: 'abc' is not a valid int"),
    ("train.iterations=2.5", "not a valid int"),
    ("train.amp=maybe", "not a valid bool"),
    ("train", "expected key=value"),
    ("train=3", "unknown config key 'train'"),
    ("train.patch_size=24", "multiple of 16"),
    ("task.spacing=3", "task.spacing must be 1, 2 or 4"),
    ("train.features=1,2", "6 positive ints"),
])
def test_bad_overrides_fail_clearly(item, message):
    with pytest.raises(PrivbenchError, match=message):
        config.resolve("quick", [item])


def test_unknown_preset():
    with pytest.raises(PrivbenchError, match=r"unknown preset 'quik'; did you mean 'quick'\?"):
        config.resolve("quik")


def test_hash_ignores_device_and_tracks_results():
    base = config.resolve("quick")
    assert config.config_hash(base) == config.config_hash(config.resolve("quick", device="cpu"))
    assert config.config_hash(base) != config.config_hash(config.resolve("quick", ["seed=1"]))
    assert config.config_hash(base) != config.config_hash(config.resolve("quick", ["train.lr=0.1"]))


def test_round_trip_through_dict():
    cfg = config.resolve("paper", ["seed=4"])
    again = config.from_dict(config.to_dict(cfg))
    assert again == cfg and config.config_hash(again) == config.config_hash(cfg)


def _float_keys():
    """Every float setting (and tuple of floats), found from the config's types."""
    import dataclasses
    import typing

    out = []
    from privbench.registry import REGISTRIES

    builtin = {name: kind for reg in REGISTRIES.values() for entry in reg.entries()
               if entry.source == "privbench" for name, kind in entry.sections}  # whatever plugins are installed
    sections = {"task": config.TaskConfig, "train": config.TrainConfig, "eval": config.EvalConfig, **builtin}
    for name, cls in sections.items():
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[f.name]
            if kind is float or typing.get_args(kind)[:1] == (float,):
                out.append(f"{name}.{f.name}")
    return out


FLOAT_KEYS = _float_keys()


def test_the_float_settings_are_all_found():
    assert {"train.lr", "mixup.curve_a", "attack.bss.sigma_min", "deformation.max_velocity_mm"} <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) == 30  # a new float setting joins the table below by itself


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", "-1e308", "1e999"])
def test_every_float_setting_is_finite_and_bounded(key, value):
    with pytest.raises(PrivbenchError, match=key.replace(".", r"\.").split(r"\.")[-1]):
        config.resolve("quick", [f"{key}={value}"])


@pytest.mark.parametrize("item, message", [
    ("seed=-1", r"seed must be in \[0, 4294967295\]"),
    ("seed=4294967296", r"seed must be in \[0, 4294967295\]"),
    ("task.cohort_seed=-1", r"task.cohort_seed must be in \[0, 4294967295\]"),
    ("train.lr=1e308", r"train.lr must be in \(0, 1\]"),
    ("train.lr=inf", "bad value for train.lr: 'inf' is not a valid float \\(finite\\)"),
    ("mixup.curve_a=0.3,nan", "not a valid comma-separated floats \\(finite\\)"),
    ("deformation.control_spacing_mm=0.001", r"control_spacing_mm must be in \[task.spacing, 240\]"),
])
def test_seeds_and_ranges(item, message):
    with pytest.raises(PrivbenchError, match=message):
        config.resolve("quick", [item])
    assert config.resolve("quick", ["seed=4294967295"]).seed == 2**32 - 1


# config_hash of (preset, defense, attacks) before the sections moved to the registry: resuming
# finds the same runs, and the hash covers exactly the run's components' sections. The
# adversarial defenses' hashes changed with adversary.cross_pairs, adversary.disc_steps and
# deformation.displacement_mm (issue 28: new defaults that train differently; they were
# 7e07475049da and 8188b387ec1e)
HASHES = [("quick", "none", (), "ba3c67c1d9d7"), ("quick", "mixup", ("bss", "reid"), "e1b2f737eb30"),
          ("quick", "privacy-net", ("linkage", "tta-average"), "468aa0b03a46"),
          ("quick", "deformation", ("reid",), "6311e744e80e")]


@pytest.mark.parametrize("preset, defense, attacks, digest", HASHES)
def test_the_hash_is_derived_from_the_registry_and_stable(preset, defense, attacks, digest):
    assert config.config_hash(config.resolve(preset, defense=defense, attacks=attacks)) == digest


def test_the_hash_covers_exactly_the_sections_of_the_run_s_components():
    def changed(defense, attacks, key, value):
        base = config.resolve("quick", defense=defense, attacks=attacks)
        return config.config_hash(base) != config.config_hash(
            config.resolve("quick", [f"{key}={value}"], defense=defense, attacks=attacks))

    assert changed("privacy-net", (), "adversary.weight", 2) and changed("deformation", (), "adversary.weight", 2)
    assert not changed("mixup", (), "adversary.weight", 2) and not changed("none", (), "mixup.tta", 2)
    assert changed("none", ("bss",), "attack.bss.iterations", 5) and not changed("none", ("reid",), "attack.bss.iterations", 5)
    assert changed("none", (), "train.channels_last", "true") and changed("none", (), "train.compile", "true")
    assert not changed("none", (), "train.workers", 2) and not changed("none", (), "train.validate_every", 7)
    assert config.used_sections(config.resolve("quick", defense="privacy-net", attacks=("reid",))) == [
        "privacy_net", "adversary", "attack.reid"]


def test_sections_come_from_the_registry_with_their_presets_and_validation():
    from privbench.attacks.bss import BssConfig
    from privbench.defenses.mixup import MixupConfig

    sections = config.component_sections()
    assert sections["mixup"] is MixupConfig and sections["attack.bss"] is BssConfig
    test = config.resolve("test")
    assert test.mixup.tta == 2 and test.attack.bss.iterations == 3  # the sections' own presets
    assert config.resolve("paper").attack.bss.iterations == 100_000
    with pytest.raises(PrivbenchError, match="mixup.tta must be >= 1"):
        config.resolve("quick", ["mixup.tta=0"])


@pytest.mark.parametrize("item, message", [
    ("mixup.ttaa=3", r"unknown config key 'mixup.ttaa'; did you mean 'mixup.tta'\?"),
    ("mixupp.tta=3", r"unknown config key 'mixupp.tta'; did you mean 'mixup.tta'\?"),
    ("attack.bs.iterations=3", r"did you mean 'attack.bss.iterations'\?"),
    ("nosuch.thing=3", r"unknown config key 'nosuch.thing' \(sections: .*mixup"),
])
def test_did_you_mean_on_the_section_and_the_field(item, message):
    with pytest.raises(PrivbenchError, match=message):
        config.resolve("quick", [item])


def test_a_task_can_declare_its_own_section(monkeypatch):
    """A task's own settings live beside it, as a defense's and an attack's do."""
    from dataclasses import dataclass

    from privbench import registry

    @dataclass
    class ToyTaskConfig:
        noise: float = 0.1
        PRESETS = {"test": {"noise": 0.5}}

        def validate(self, run):
            config.require((0 <= self.noise <= 1, "toy_task.noise must be in [0, 1]"))

    registry.TASKS.names()  # the built-ins first, then a copy that forgets the toy afterwards
    monkeypatch.setattr(registry.TASKS, "_entries", dict(registry.TASKS._entries))
    registry.TASKS.register("toy-task", description="a toy", config=ToyTaskConfig)(lambda cfg: None)
    cfg = config.resolve("quick", ["task.name=toy-task", "toy_task.noise=0.3"])
    assert cfg.toy_task.noise == 0.3 and config.resolve("test").toy_task.noise == 0.5
    assert "toy_task" in config.used_sections(cfg)
    assert config.config_hash(cfg) != config.config_hash(config.resolve("quick", ["task.name=toy-task"]))
    assert config.config_hash(config.resolve("quick")) == config.config_hash(
        config.resolve("quick", ["toy_task.noise=0.9"]))  # runs on other tasks ignore it
    with pytest.raises(PrivbenchError, match=r"toy_task.noise must be in \[0, 1\]"):
        config.resolve("quick", ["task.name=toy-task", "toy_task.noise=2"])


def test_a_card_written_with_a_removed_plugin_still_reads():
    """An older card recorded every registered section, a removed plugin's too: those are set
    aside; an unknown key of a section privbench knows is still an error."""
    data = config.to_dict(config.resolve("test", ["train.iterations=7"]))
    data["gone_defense"] = {"strength": 1.0}
    data["attack"]["gone_attack"] = {"bins": 3}
    cfg = config.from_dict(data)
    assert cfg.train.iterations == 7 and cfg.preset == "test"
    data["train"]["nonsense"] = 1
    with pytest.raises(PrivbenchError, match="train.nonsense"):
        config.from_dict(data)


def test_a_card_records_only_what_its_run_uses_and_reads_back_with_the_presets_values():
    cfg = config.resolve("test", ["attack.bss.iterations=11"], defense="mixup", attacks=("bss",))
    data = config.to_dict(cfg, used_only=True)
    assert set(data) - set(config.RUN_FIELDS) == {"task", "train", "eval", "mixup", "attack"}
    assert set(data["attack"]) == {"bss"}
    again = config.from_dict(data)
    assert config.config_hash(again) == config.config_hash(cfg) and again.attack.bss.iterations == 11
    assert again.attack.separation == config.resolve("test").attack.separation  # the preset's, not the bare defaults'
