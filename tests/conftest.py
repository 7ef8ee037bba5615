"""Shared fixtures: every test writes its cohorts and runs under a temporary folder."""

from __future__ import annotations

import pytest

from privbench import config


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """One cohort cache for the whole session (generation is the slow part)."""
    return tmp_path_factory.mktemp("cache")


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
