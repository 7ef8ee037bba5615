"""Shared fixtures: every test writes its cohorts and runs under a temporary folder."""

from __future__ import annotations

import os

import pytest
import torch

from privbench import config, precision


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores (two 2-thread torch processes on
    2 cores run slower than one), and so do the processes its tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The tests that share the session's trained runs go to one xdist worker (``--dist
    loadgroup``), so each run is trained once."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("trained_run"))


@pytest.fixture(autouse=True)
def cpu_without_native_bfloat16(monkeypatch):
    """Every test runs in float32 on whatever CPU runs it (Intel with AMX, AMD with AVX512-BF16
    whose bfloat16 gives NaN, or neither), so the numbers tests compare do not depend on the
    machine; test_precision.py simulates the CPUs that have bfloat16 units."""
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """One cohort cache for the whole session (generation is the slow part), shared by the
    xdist workers: the cache writes atomically, so workers that generate the same cohort at once
    both finish."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return tmp_path_factory.mktemp("cache")
    shared = tmp_path_factory.getbasetemp().parent / "cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PRIVBENCH_CACHE", str(cache_dir))


@pytest.fixture
def test_cfg() -> config.RunConfig:
    """The ``test`` preset: a tiny 4 mm cohort and a few training iterations."""
    return config.resolve("test")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cache_dir):
    """``trained_run(defense)``: one ``test`` run of ``defense`` with every registered attack
    (a :class:`~privbench.runner.RunResult`), made once per session and shared."""
    from privbench import runner
    from privbench.registry import list_attacks

    out, runs = tmp_path_factory.mktemp("trained"), {}

    def run(defense: str):
        if defense not in runs:
            cfg = config.resolve("test", defense=defense)
            cfg.attacks = tuple(list_attacks())
            runs[defense] = None  # a failed run fails its first user and is not repeated
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
                runs[defense] = runner.run(cfg, out=out, progress=False)
        if runs[defense] is None:
            pytest.fail(f"the run of {defense} failed (see its first test)")
        return runs[defense]

    return run


@pytest.fixture(scope="module")
def mixup_client(cache_dir):
    """``(cfg, task, defense)``: an untrained mixup client on the test preset's cohort, for
    attacks driven through :func:`privbench.attacks.base.execute` (one per test module)."""
    from privbench.defenses.mixup import MixupPrivacy
    from privbench.registry import create_task

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", defense="mixup")
        task = create_task(cfg.task.name, cfg=cfg)
    defense = MixupPrivacy()
    defense.attach(task, cfg)
    return cfg, task, defense
