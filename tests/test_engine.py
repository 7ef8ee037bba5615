import json

import pytest
import torch

from privbench import config, engine
from privbench.config import EvalConfig, TrainConfig
from privbench.defenses.none import NoProxy
from privbench.nets import SegmentationNet
from privbench.registry import create_defense, create_task

from helpers import die_at_batch


def test_patch_batches_depend_only_on_seed_and_iteration(test_cfg):
    task = create_task("mni-tissue", cfg=test_cfg)
    sampler = engine.PatchSampler(task, patch_size=32, batch_size=3, seed=5)
    a, b, c = sampler.batch(7), sampler.batch(7), sampler.batch(8)
    assert a.image.shape == (3, 1, 32, 32, 32) and a.label.shape == (3, 32, 32, 32)
    assert a.label.dtype == torch.int64 and a.image.dtype == torch.float32
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label) and a.subjects == b.subjects
    assert not torch.equal(a.image, c.image)
    assert set(a.subjects) <= set(task.subjects("train"))


def test_resumed_training_equals_uninterrupted(test_cfg, tmp_path, monkeypatch):
    """Die after the checkpoint at iteration 2 of 4, resume: same weights as 4 straight."""
    task = create_task("mni-tissue", cfg=test_cfg)
    device = torch.device("cpu")
    test_cfg.train.iterations, test_cfg.train.checkpoint_every = 4, 2
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir(), resumed_dir.mkdir()

    torch.manual_seed(0)
    straight = NoProxy()
    report = straight.fit(task, test_cfg, device=device, progress=False, workdir=straight_dir)
    assert report.iterations == 4 and report.start_iteration == 0

    heal = die_at_batch(monkeypatch, 2)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        NoProxy().fit(task, test_cfg, device=device, progress=False, workdir=resumed_dir)
    heal()
    torch.manual_seed(123)  # a different init must be overwritten by the checkpoint
    resumed = NoProxy()
    report = resumed.fit(task, test_cfg, device=device, progress=False, workdir=resumed_dir)
    assert report.start_iteration == 2 and report.iterations == 4

    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_lowers_the_loss(test_cfg, monkeypatch):
    task = create_task("mni-tissue", cfg=test_cfg)
    test_cfg.train.iterations, test_cfg.train.lr = 12, 3e-3
    losses = []
    original = engine.train

    def recording_train(step, *args, **kwargs):
        def recorded(batch, iteration):
            result = step(batch, iteration)
            losses.append(result["loss"])
            return result

        return original(recorded, *args, **kwargs)

    monkeypatch.setattr(engine, "train", recording_train)
    NoProxy().fit(task, test_cfg, device=torch.device("cpu"), progress=False)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1


def test_full_volume_prediction_is_a_probability_map(test_cfg):
    task = create_task("mni-tissue", cfg=test_cfg)
    defense = NoProxy()
    defense.fit(task, test_cfg, device=torch.device("cpu"), progress=False)
    image, _ = task.load(task.scans("test")[0])
    probs = defense.segment(image[None])
    assert probs.shape == (1, 4, *image.shape[1:])
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-5) and probs.min() >= 0
    assert torch.equal(defense.encode(image, None), image)  # the baseline's proxy is the scan
    direct = engine.sliding_window_predict(defense.net, image[None], 32, EvalConfig(), torch.device("cpu"))
    assert torch.allclose(direct, probs)


def test_learning_rate_schedules():
    poly = TrainConfig(lr=0.01, iterations=100, lr_schedule="poly")
    assert engine.learning_rate(poly, 0) == 0.01
    assert engine.learning_rate(poly, 50) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert engine.learning_rate(poly, 100) == 0
    assert engine.learning_rate(poly, 150) == 0  # past the end (bench's extra steps): 0, not complex
    constant = TrainConfig(lr=0.01, iterations=100, lr_schedule="constant")
    assert engine.learning_rate(constant, 99) == 0.01


def test_volumes_predicted_together_equal_one_by_one():
    """Several volumes share each window's network call and get the same probabilities."""
    torch.manual_seed(0)
    net = SegmentationNet(1, 4, (8, 8, 16, 16, 32, 8)).eval()
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return net(x)

    volumes = torch.rand(3, 1, 40, 44, 36)
    cfg = EvalConfig(sw_overlap=0.25, sw_batch_size=6)
    together = engine.sliding_window_predict(counted, volumes, 32, cfg, torch.device("cpu"), amp=False)
    together_calls, calls = calls, []
    alone = torch.cat([engine.sliding_window_predict(counted, v[None], 32, cfg, torch.device("cpu"),
                                                     amp=False) for v in volumes])
    assert together.shape == (3, 4, 40, 44, 36)
    assert torch.allclose(together, alone, atol=1e-5)
    # every call carries whole windows of all three volumes, and no patch is computed twice
    assert all(size % 3 == 0 for size in together_calls)
    assert sum(together_calls) == sum(calls)


class _Counter:
    """A sampler and a one-weight model: enough for the training loop's bookkeeping."""

    def batch(self, iteration):
        return torch.ones(1)


def test_a_resumed_run_counts_the_training_time_of_every_process(tmp_path):
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    state = {"net": net, "optimizer": optimizer}

    def step(batch, iteration):
        optimizer.zero_grad()
        loss = net(batch).pow(2).sum()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    def train(iterations):
        cfg = TrainConfig(iterations=iterations, checkpoint_every=2)
        return engine.train(step, _Counter(), cfg, state=state, device=torch.device("cpu"), workdir=tmp_path,
                            progress=False)

    first = train(2)
    assert first.earlier_seconds == 0 and first.total_seconds == first.seconds and first.it_per_s > 0
    recorded = json.loads((tmp_path / engine.seconds_file()).read_text())
    assert recorded["iteration"] == 2 and 0 < recorded["seconds"] <= first.seconds  # up to the checkpoint
    second = train(4)
    assert second.start_iteration == 2 and second.earlier_seconds == recorded["seconds"]
    assert second.total_seconds == pytest.approx(recorded["seconds"] + second.seconds)
    finished = train(4)  # nothing left to train: no rate, the time already spent
    spent = json.loads((tmp_path / engine.seconds_file()).read_text())["seconds"]  # as saved at iteration 4
    assert spent <= second.total_seconds and finished.it_per_s is None and finished.earlier_seconds == spent
    (tmp_path / engine.seconds_file()).unlink()  # e.g. a checkpoint written by older code
    assert train(4).total_seconds is None


@pytest.mark.parametrize("name", ["none", "mixup"])
def test_a_run_continued_from_its_checkpoint_equals_one_straight_run(name, tmp_path):
    """A long study stopped at a session's end and continued: two iterations, then the same run
    continued to four, gives the weights and the training curve (losses and validation) of four
    iterations straight (constant learning rate, so the shorter run's schedule is the same)."""
    cfg = config.resolve("test", {"train.amp": False, "train.lr_schedule": "constant", "train.validate_every": 1,
                                  "train.checkpoint_every": 100}, defense=name)
    task = create_task("mni-tissue", cfg=cfg)
    runs = {}
    for label, lengths in (("straight", [4]), ("continued", [2, 4])):
        for start, iterations in enumerate(lengths):
            cfg.train.iterations = iterations
            torch.manual_seed(start)  # a continued run starts from another init: the checkpoint overwrites it
            defense = create_defense(name)
            defense.fit(task, cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path / label)
        runs[label] = defense
    for key, module in runs["straight"].state.items():
        if isinstance(module, torch.nn.Module):
            for (param, a), b in zip(module.state_dict().items(), runs["continued"].state[key].state_dict().values()):
                assert torch.equal(a, b), (key, param)
    straight, continued = ((tmp_path / label / "progress.csv").read_text() for label in ("straight", "continued"))
    assert straight == continued and "val_dice" in straight and len(straight.splitlines()) == 5
