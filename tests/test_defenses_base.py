"""The trained-defense base: every trained defense restores from a run folder without training,
and the restored defense gives the card's numbers again."""

import pytest
import torch

from privbench import config, engine
from privbench.defenses.base import TrainedDefense
from privbench.errors import PrivbenchError
from privbench.registry import DEFENSES, create_task

TRAINED = [entry.name for entry in DEFENSES.entries() if isinstance(entry.factory, type)
           and issubclass(entry.factory, TrainedDefense)]


def test_every_built_in_defense_uses_the_base():
    assert {"none", "mixup", "privacy-net", "deformation"} <= set(TRAINED)


@pytest.mark.parametrize("name", TRAINED)
def test_a_restored_defense_trains_nothing_and_reproduces_the_card(name, trained_run, tmp_path, monkeypatch):
    result = trained_run(name)
    cfg = config.from_dict(result.card.config)
    task = create_task(cfg.task.name, cfg=cfg)
    checkpoint = result.run_dir / engine.CHECKPOINT
    before = checkpoint.read_bytes()
    monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("restoring trained"))
    monkeypatch.setattr(engine.training, "save_checkpoint", lambda *a, **k: pytest.fail("restoring wrote"))
    torch.manual_seed(12345)  # other initial weights: only the checkpoint can give the card's numbers
    restored = DEFENSES.create(name)
    restored.restore(result.run_dir, task, cfg, device=torch.device("cpu"))
    assert restored.evaluate(task, cfg, run_dir=tmp_path).utility == result.card.utility
    assert checkpoint.read_bytes() == before


def test_restoring_an_unfinished_run_is_refused(trained_run):
    result = trained_run("none")
    cfg = config.from_dict(result.card.config)
    task = create_task(cfg.task.name, cfg=cfg)
    longer = config.from_dict(result.card.config)
    longer.train.iterations = cfg.train.iterations + 2
    with pytest.raises(PrivbenchError, match="holds iteration 3, not the final 5: the run did not finish"):
        DEFENSES.create("none").restore(result.run_dir, task, longer, device=torch.device("cpu"))
    with pytest.raises(PrivbenchError, match="no checkpoint there"):
        DEFENSES.create("none").restore(result.run_dir / "nowhere", task, cfg, device=torch.device("cpu"))
