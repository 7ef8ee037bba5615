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
