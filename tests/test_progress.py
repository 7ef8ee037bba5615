"""Convergence evidence: the validation role, the training curve (progress.csv, progress.png)
and the plateau verdict; validation must not change what is trained."""

import pandas as pd
import pytest
import torch

from privbench import config, convergence
from privbench.defenses.deformation import DeformationProxy
from privbench.defenses.none import NoProxy
from privbench.registry import create_task

from helpers import die_at_batch


def test_validation_subjects_are_public_and_never_victims(test_cfg):
    test_cfg.task.n_subjects, test_cfg.task.public_fraction = 12, 0.3
    task = create_task("mni-tissue", cfg=test_cfg)
    validation = task.subjects("validation")
    assert len(validation) == test_cfg.task.validation_subjects == 2
    assert set(validation) <= set(task.subjects("public"))
    assert not set(validation) & (set(task.subjects("test")) | set(task.subjects("train")))
    assert task.summary()["validation_subjects"] == 2
    test_cfg.task.validation_subjects = 0
    none = create_task("mni-tissue", cfg=test_cfg)
    assert none.scans("validation") == [] and NoProxy().validator(none, test_cfg) is None
    assert [s.subject for s in none.scans("train")] == [s.subject for s in task.scans("train")]


@pytest.mark.parametrize("defense, losses", [(DeformationProxy, {"seg", "disc"})])  # several networks, keys
def test_validating_changes_nothing_that_is_trained(defense, losses, test_cfg, tmp_path):
    """Mixup and deformation draw keys to validate: from their own stream, so every network's
    weights stay bit-identical (which is why train.validate_every is left out of the config hash)."""
    task = create_task("mni-tissue", cfg=test_cfg)
    test_cfg.train.iterations = 4
    trained = {}
    for every in (0, 2):
        test_cfg.train.validate_every = every
        torch.manual_seed(0)
        made = defense()
        made.fit(task, test_cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path / str(every))
        trained[every] = {f"{key}.{name}": value for key, obj in made.state.items()
                          if isinstance(obj, torch.nn.Module) for name, value in obj.state_dict().items()}
    assert len(trained[0]) > 0 and trained[0].keys() == trained[2].keys()
    for name, weights in trained[0].items():
        assert torch.equal(weights, trained[2][name]), name
    curve = pd.read_csv(tmp_path / "2" / convergence.CSV).set_index("iteration")
    assert list(curve.index) == [1, 2, 3, 4] and list(curve["val_dice"].dropna().index) == [2, 4]
    assert curve["val_dice"].dropna().between(0, 1).all() and {"loss", "val_dice_GM", *losses} <= set(curve.columns)
    assert "val_dice" not in pd.read_csv(tmp_path / "0" / convergence.CSV)


def test_validation_leaves_the_config_hash_alone():
    changed = config.resolve("test", {"train.validate_every": 7, "task.validation_subjects": 1})
    assert config.config_hash(changed) == config.config_hash(config.resolve("test"))


def test_a_resumed_run_continues_its_curve(test_cfg, tmp_path, monkeypatch):
    task = create_task("mni-tissue", cfg=test_cfg)
    test_cfg.train.iterations, test_cfg.train.checkpoint_every, test_cfg.train.validate_every = 4, 2, 1
    torch.manual_seed(0)
    NoProxy().fit(task, test_cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path / "straight")
    heal = die_at_batch(monkeypatch, 3)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        NoProxy().fit(task, test_cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path / "resumed")
    assert list(pd.read_csv(tmp_path / "resumed" / convergence.CSV)["iteration"]) == [1, 2]  # the checkpoint's
    heal()
    NoProxy().fit(task, test_cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path / "resumed")
    straight = pd.read_csv(tmp_path / "straight" / convergence.CSV)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "resumed" / convergence.CSV), straight)


def curve(dice):
    return pd.DataFrame({"iteration": [100 * (i + 1) for i in range(len(dice))], "loss": 1.0, "val_dice": dice})


@pytest.mark.parametrize("dice, gain, plateaued", [
    ([0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.78, 0.80, 0.81, 0.815], 0.0225, False),  # 0.8125 - 0.79
    ([0.2, 0.4, 0.5, 0.6, 0.7, 0.80, 0.80, 0.81, 0.81, 0.805], 0.0025, True),
    ([0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7], -0.05, True),  # fell: stopped rising
    ([0.5, 0.6], None, None),  # nothing validated after 60% of 1,000 iterations
    ([], None, None),
])
def test_the_plateau_verdict(dice, gain, plateaued):
    found = convergence.verdict(curve(dice), iterations=1000)
    assert found["plateaued"] is plateaued and found["validations"] == len(dice)
    assert found["gain_last_fifth"] == (pytest.approx(gain) if gain is not None else None)
    if dice:
        assert found["final_val_dice"] == dice[-1] and found["best_val_dice"] == max(dice)


def test_a_run_writes_its_curve_figure_and_verdict(tmp_path):
    from privbench import runner

    cfg = config.resolve("test", {"train.iterations": 4, "train.validate_every": 2}, defense="none")
    result = runner.run(cfg, out=tmp_path, progress=False)
    assert (result.run_dir / convergence.PNG).stat().st_size > 0
    section = result.card.sections["convergence"]
    assert section["validations"] == 2 and section["final_val_dice"] > 0
    assert result.card.files["progress_png"] == convergence.PNG
    assert result.card.summary[0].startswith("convergence: validation Dice")


def test_a_run_shorter_than_one_interval_is_not_validated(tmp_path):
    from privbench import engine
    from privbench.config import TrainConfig

    class Counter:
        def batch(self, iteration):
            return engine.Batch(torch.zeros(1), torch.zeros(1), [])

    calls = []
    for iterations in (3, 4):
        cfg = TrainConfig(iterations=iterations, validate_every=4, checkpoint_every=100)
        engine.train(lambda batch, i: {"loss": 1.0}, Counter(), cfg, state={}, device=torch.device("cpu"),
                     workdir=tmp_path / str(iterations), progress=False, validate=lambda: calls.append(1) or {"v": 1.0})
    assert len(calls) == 1  # the 4-iteration run, at its end
