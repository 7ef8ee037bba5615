"""Batches off the main thread and data-parallel training over processes (gloo on CPU)."""

import json
import os
import subprocess
import sys

import pandas as pd
import torch

from privbench import config, engine
from privbench.defenses.none import NoProxy
from privbench.identity import PairSampler
from privbench.registry import create_task


def same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        for name, value in vars(x).items():
            other = getattr(y, name)
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name


def test_worker_batches_equal_the_main_threads(test_cfg):
    task = create_task("mni-tissue", cfg=test_cfg)
    for sampler in (engine.PatchSampler(task, 32, 3, seed=5, references=True, foreground=0.5),
                    PairSampler(task, 32, 4, seed=5)):
        main = [sampler.batch(i) for i in range(3, 9)]
        same_batches(list(engine.batches(sampler, 3, 9, workers=2)), main)
        same_batches(list(engine.batches(sampler, 3, 9, workers=0)), main)


def test_training_with_workers_is_training_without(test_cfg):
    task = create_task("mni-tissue", cfg=test_cfg)
    trained = []
    for workers in (0, 2):
        test_cfg.train.workers = workers
        torch.manual_seed(0)
        defense = NoProxy()
        defense.fit(task, test_cfg, device=torch.device("cpu"), progress=False)
        trained.append(defense.net.state_dict())
    for name, weights in trained[0].items():
        assert torch.equal(weights, trained[1][name]), name
    assert engine.training.loader_workers(config.resolve("quick").train, torch.device("cpu")) == 0


def test_the_ranks_shares_make_up_the_batch(test_cfg):
    batch = engine.PatchSampler(create_task("mni-tissue", cfg=test_cfg), 32, 4, seed=1).batch(0)
    parts = [engine.share(batch, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([p.image for p in parts]), batch.image)
    assert parts[0].subjects + parts[1].subjects == batch.subjects and len(parts[1].label) == 2


def test_two_gloo_processes_train_one_run(tmp_path, cache_dir):
    """torchrun with 2 CPU processes: one card (from rank 0), and the averaged loss falls."""
    env = {**os.environ, "PRIVBENCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "privbench", "run", "--preset", "test", "--defense", "none", "-q", "-o", str(tmp_path),
               "--set", "train.iterations=12", "--set", "train.lr=3e-3", "--set", "train.batch_size=4"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    [card] = tmp_path.glob("mni-tissue/none/*/card.json")
    assert len(list(tmp_path.glob("mni-tissue/none/*"))) == 1 and done.stdout.count("card:") == 1
    assert json.loads(card.read_text())["distributed"] == {"world_size": 2, "backend": "gloo"}
    loss = pd.read_csv(card.parent / "progress.csv")["loss"]
    assert len(loss) == 12 and loss.iloc[-3:].mean() < loss.iloc[:3].mean()


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused(monkeypatch):
    import pytest

    from privbench.engine import distributed
    from privbench.errors import PrivbenchError

    monkeypatch.setattr(distributed, "world", lambda: 3)
    with pytest.raises(PrivbenchError, match="train.batch_size 2 does not divide among 3 processes"):
        distributed.require_divisible(2)
    distributed.require_divisible(6)


def test_an_optimizer_trained_twice_averages_each_step_once(monkeypatch, tmp_path):
    """A second engine.train on the same optimizer (a defense's next phase) adds no second hook."""
    import torch.distributed as dist

    from privbench.engine import distributed

    calls = []
    monkeypatch.setattr(distributed, "_average_gradients", lambda *args: calls.append(args))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            distributed.synchronise({"net": net, "optimizer": optimizer})
        net(torch.ones(2, 3)).sum().backward()
        optimizer.step()
    finally:
        dist.destroy_process_group()
    assert len(calls) == 1
