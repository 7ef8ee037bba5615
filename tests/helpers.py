"""Test helpers shared by several test modules."""

import numpy as np

from privbench.tasks.base import Scan, Task


class CoordinateTask(Task):
    """Volumes whose voxels encode (scan, position): image = 1e6*scan + 1e4*d + 1e2*h + w."""

    name = "coordinates"
    class_names = ("background", "x")

    def __init__(self, subjects=("s0", "s0", "s1", "s2")):
        scans = [Scan(s, f"ses{i}", f"img{i}", f"lab{i}") for i, s in enumerate(subjects)]
        super().__init__({"train": scans, "test": [], "reference": [], "public": []}, 4.0, 32)

    def arrays(self, scan):
        index = int(scan.session[3:])
        d, h, w = np.meshgrid(*(np.arange(n) for n in (40, 36, 44)), indexing="ij")
        return (1e6 * index + 1e4 * d + 1e2 * h + w).astype(np.float32), np.full((40, 36, 44), index)


GALLERY_COHORT = {"task.n_subjects": 40, "task.public_fraction": 0.4, "task.test_fraction": 0.2,
                  "task.reference_subjects": 12, "task.max_test_scans": 0}


def gallery_cohort(cache_dir, **overrides):
    """The attacks' 4 mm test cohort: 16 public subjects (a decoder's or separator's training
    data, the gallery's distractors), 8 test subjects with all their scans, 12 reference
    subjects; ``overrides`` are more ``--set`` items (``attack.inversion.iterations=...``)."""
    import pytest

    from privbench import config
    from privbench.registry import create_task

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", {**GALLERY_COHORT, **overrides})
        return cfg, create_task("mni-tissue", cfg=cfg)


def die_at_batch(monkeypatch, iteration):
    """Make every PatchSampler raise KeyboardInterrupt (a killed run) when asked for batch
    ``iteration``; returns a function that heals it."""
    from privbench import engine

    original = engine.PatchSampler.batch

    def dying_batch(self, i):
        if i == iteration:
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(engine.PatchSampler, "batch", dying_batch)
    return lambda: monkeypatch.setattr(engine.PatchSampler, "batch", original)
