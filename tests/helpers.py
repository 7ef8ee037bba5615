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
