"""The attack boundary: every registered attack receives an Observation and nothing else."""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from privbench import config
from privbench.attacks.base import GRANTS, Observation, attack_config, attacker_workdir, execute
from privbench.config import RunConfig
from privbench.defenses.base import Defense
from privbench.defenses.mixup import MixupKey, MixupPrivacy
from privbench.registry import ATTACKS, create_attack, create_task
from privbench.tasks.base import Task

SEED = 918273  # an unusual run seed, so finding it in the observation means it leaked


class Seen(Exception):
    """Stops an attack once it has been handed its observation."""


@pytest.fixture(scope="module")
def client(cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", {"task.n_subjects": 12, "task.public_fraction": 0.3,
                                      "task.test_fraction": 0.4, "task.max_test_scans": 0,
                                      "task.reference_subjects": 3}, defense="mixup", seed=SEED)
        task = create_task(cfg.task.name, cfg=cfg)
    torch.manual_seed(0)
    defense = MixupPrivacy()
    defense.setup(task, cfg, torch.device("cpu"))
    return cfg, task, defense


def reachable(root):
    """Every object reachable from ``root`` through dataclass fields, attributes and containers
    (tensors and arrays are leaves)."""
    seen, stack, out = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, int, float, bool, Path, type(None))):
            continue
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif dataclasses.is_dataclass(obj):
            stack += [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "__dict__"):
            stack += list(vars(obj).values())
    return out


SECRET = 2024  # one client secret: the same keys and order on every call


def observed(attack, cfg, task, defense, tmp_path, monkeypatch):
    box = []

    def grab(observation):
        box.append(observation)
        raise Seen

    monkeypatch.setattr(attack, "reconstruct", grab)
    with pytest.raises(Seen):
        execute(attack, defense, task, cfg, run_dir=tmp_path, secret=SECRET)
    return box[0]


@pytest.mark.parametrize("name", ATTACKS.names())
def test_an_attack_cannot_reach_the_defense_task_config_keys_or_labels(name, client, tmp_path, monkeypatch):
    cfg, task, defense = client
    cfg = dataclasses.replace(cfg, attacks=(name,))
    attack = create_attack(name)
    if not attack.applies("mixup"):
        pytest.skip(f"{name} does not apply to mixup")
    keys = []
    real_new_key = defense.new_key
    monkeypatch.setattr(defense, "new_key", lambda generator=None, k=1: keys.append(
        real_new_key(generator, k=k)) or keys[-1])
    observation = observed(attack, cfg, task, defense, tmp_path, monkeypatch)
    assert isinstance(observation, Observation) and observation.requests and keys
    objects = reachable(observation)
    forbidden = (Defense, Task, RunConfig, MixupKey, torch.Generator, torch.nn.Module)
    assert not [type(o).__name__ for o in objects if isinstance(o, forbidden)]
    assert SEED not in [o for o in objects if type(o) is int]
    volumes = {v.float().numpy().tobytes() for o in objects if isinstance(o, torch.Tensor) and o.ndim >= 3
               for v in o.reshape(-1, *o.shape[-3:])}
    references = {v.float().numpy().tobytes() for key in keys for v in key.ref_image.reshape(-1, *key.ref_image.shape[-3:])}
    labels = {task.load(scan)[1].float().numpy().tobytes() for scan in task.scans("test")}
    assert not volumes & references and not volumes & labels
    assert set(observation.granted) <= set(GRANTS)
    assert (observation.weights is not None) == ("mixing_weight" in observation.granted)
    assert (observation.gallery is not None) == ("gallery" in observation.granted)
    assert (observation.public is not None) == ("public_pool" in observation.granted)
    if "mixing_weight" not in observation.granted:  # without the grant, no key's a is anywhere
        weights = {key.a for key in keys}
        assert not [o for o in objects if type(o) is float and o in weights]


def test_requests_arrive_shuffled_but_reproducibly(client, tmp_path, monkeypatch):
    cfg, task, defense = client
    attack = create_attack("reid")
    first = observed(attack, cfg, task, defense, tmp_path, monkeypatch)
    again = observed(attack, cfg, task, defense, tmp_path, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(first.requests, again.requests))
    # the requests' subjects, recovered from the truth the harness keeps, are not in subject order
    truths = []
    real_score = attack.score
    monkeypatch.setattr(attack, "reconstruct", lambda observation: torch.eye(len(observation.requests)))
    monkeypatch.setattr(attack, "score", lambda g, truth, o, r: truths.append(truth) or real_score(g, truth, o, r))
    execute(attack, defense, task, cfg, run_dir=tmp_path, secret=SECRET)
    subjects = truths[0].subjects
    in_order = [s.subject for s in task.scans("test")]
    assert sorted(subjects) == sorted(in_order) and subjects != in_order
    # naming each request after its neighbour in the list no longer re-identifies it
    neighbour = np.mean([subjects[i] == subjects[i + 1] for i in range(len(subjects) - 1)])
    assert neighbour < np.mean([in_order[i] == in_order[i + 1] for i in range(len(in_order) - 1)])


def test_an_unknown_grant_is_refused(client, tmp_path):
    cfg, task, defense = client
    attack = create_attack("reid")
    attack.grants = ("the keys",)
    attack.granted = lambda config, defense="": attack.grants
    with pytest.raises(ValueError, match="unknown"):
        execute(attack, defense, task, cfg, run_dir=tmp_path)


WHITE_BOX = [(name, defense) for name in ATTACKS.names() for defense in ("privacy-net", "deformation")
             if "weights" in create_attack(name).grants and create_attack(name).applies(defense)]


@pytest.mark.parametrize("name, defense_name", WHITE_BOX)
def test_a_white_box_attacker_gets_copies_of_the_weights_and_nothing_of_the_victims(
        name, defense_name, client, tmp_path, monkeypatch):
    from privbench.registry import create_defense

    cfg, task, _ = client
    cfg = dataclasses.replace(cfg, defense=defense_name, attacks=(name,))
    defense = create_defense(defense_name)
    defense.setup(task, cfg, torch.device("cpu"))
    keys = []
    real_new_key = defense.new_key
    monkeypatch.setattr(defense, "new_key", lambda generator=None: keys.append(real_new_key(generator)) or keys[-1])
    observation = observed(create_attack(name), cfg, task, defense, tmp_path, monkeypatch)
    assert observation.white_box is not None and "weights" in observation.granted
    objects = reachable(observation)
    assert not [type(o).__name__ for o in objects if isinstance(o, (Defense, Task, RunConfig, torch.Generator))]
    own = {id(m) for m in reachable(defense) if isinstance(m, torch.nn.Module)}
    modules = [o for o in objects if isinstance(o, torch.nn.Module)]
    assert modules and not [m for m in modules if id(m) in own]  # copies, never the defense's own networks
    ints = {o for o in objects if type(o) is int}
    assert SEED not in ints and not {key.seed for key in keys if hasattr(key, "seed")} & ints


def test_an_attackers_work_folder_is_keyed_to_its_settings(client, tmp_path):
    cfg, _, _ = client
    attack = create_attack("learned-reid")
    here = attacker_workdir(attack, attack_config(cfg, attack.name), cfg, tmp_path)
    assert here.parent == tmp_path / "attackers" and here.name.startswith("learned-reid-")
    assert attacker_workdir(attack, attack_config(cfg, attack.name), cfg, tmp_path) == here
    changed = copy.deepcopy(cfg)
    config.set_value(changed, "attack.learned_reid.iterations", cfg.attack.learned_reid.iterations + 1)
    assert attacker_workdir(attack, attack_config(changed, attack.name), changed, tmp_path) != here
    reseeded = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert attacker_workdir(attack, attack_config(reseeded, attack.name), reseeded, tmp_path) != here
    edited = type("LearnedReid", (type(attack),), {"__module__": __name__})()  # the same attack, other code
    assert attacker_workdir(edited, attack_config(cfg, attack.name), cfg, tmp_path) != here
