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
