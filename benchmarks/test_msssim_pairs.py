"""Speed of the all-pairs 3D MS-SSIM matrix: ``ms_ssim3d_pairs`` against pair-by-pair ``ms_ssim3d``.

40 random volumes of the 2 mm cohort size (72x96x80, window 11, 3 scales), i.e. the 780 pairs
of the upper triangle. Goal: ``ms_ssim3d_pairs`` at least 5x faster than the loop.

Run with ``pytest benchmarks/test_msssim_pairs.py`` (not part of the test suite); both
functions report in one benchmark group, so the printed table compares them directly.
"""

import pytest
import torch

from privbench.metrics import ms_ssim3d, ms_ssim3d_pairs

N, SHAPE = 40, (72, 96, 80)
GROUP = f"ms_ssim3d all pairs ({N} volumes {'x'.join(map(str, SHAPE))})"


@pytest.fixture(scope="module")
def volumes():
    return torch.rand(N, 1, *SHAPE, generator=torch.Generator().manual_seed(0))


def _pair_by_pair(volumes):
    n = volumes.shape[0]
    out = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = ms_ssim3d(volumes[i, 0], volumes[j, 0])
    return out


def test_pair_by_pair_loop(benchmark, volumes):
    benchmark.group = GROUP
    matrix = benchmark.pedantic(_pair_by_pair, args=(volumes,), rounds=1, iterations=1)
    assert matrix.shape == (N, N) and torch.isfinite(matrix).all()


def test_ms_ssim3d_pairs(benchmark, volumes):
    benchmark.group = GROUP
    matrix = benchmark.pedantic(ms_ssim3d_pairs, args=(volumes,), rounds=1, iterations=1)
    assert matrix.shape == (N, N) and torch.isfinite(matrix).all()
    torch.testing.assert_close(matrix, matrix.T, atol=0, rtol=0)
