"""Tests for privbench.metrics.ms_ssim3d_pairs against pair-by-pair ms_ssim3d."""

import pytest
import torch
import torch.nn.functional as F

from privbench.metrics import ms_ssim3d, ms_ssim3d_pairs, ms_ssim3d_settings


def _volumes(n, shape, seed=0):
    """n smooth-ish volumes in [0, 1]: a shared smooth base plus smoothed noise, and one inverted copy."""
    g = torch.Generator().manual_seed(seed)

    def smooth(t):
        return F.avg_pool3d(F.pad(t, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)

    base = smooth(torch.rand(1, 1, *shape, generator=g))
    vols = [(base + 0.5 * smooth(torch.rand(1, 1, *shape, generator=g))) / 1.5 for _ in range(n - 1)]
    vols.append(1 - vols[0])  # anti-correlated with volume 0: exercises the relu of negative terms
    return torch.cat(vols)


def _loop(vols, **kwargs):
    n = vols.shape[0]
    out = torch.empty(n, n, dtype=vols.dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = ms_ssim3d(vols[i, 0], vols[j, 0], **kwargs)
    return out


# float32 agrees to ~5e-6 (both sides carry float32 rounding of E[x^2] - mu^2); float64 far more closely.
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((24, 28, 26), {}),  # window 7, 2 scales
        ((44, 48, 46), {}),  # window 11, 3 scales
        ((24, 28, 26), {"win_size": 5, "weights": (0.2, 0.3, 0.5), "data_range": 2.0}),
    ],
)
def test_pairs_equal_pair_by_pair_ms_ssim3d(shape, kwargs, dtype, atol):
    vols = _volumes(5, shape).to(dtype)
    if not kwargs:
        assert len(ms_ssim3d_settings(shape)[1]) == (2 if shape[0] == 24 else 3)
    got = ms_ssim3d_pairs(vols, **kwargs)
    expected = _loop(vols, **kwargs)
    assert got.shape == (5, 5) and got.dtype == dtype
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    assert (got[0, 1:4] > 0.3).all()  # not trivially small
    if not kwargs:  # the inverted copy has cs < 0, clamped to 0 (with data_range 2 the larger C2 keeps cs > 0)
        assert (got[:4, 4] == 0).all()


def test_pairs_symmetric_with_ms_ssim3d_diagonal_and_4d_input():
    vols = _volumes(4, (24, 28, 26), seed=1)
    got = ms_ssim3d_pairs(vols[:, 0])  # [N, D, H, W]
    torch.testing.assert_close(got, got.T, atol=0, rtol=0)
    diagonal = torch.stack([ms_ssim3d(v[0], v[0]) for v in vols])
    torch.testing.assert_close(got.diagonal(), diagonal, atol=1e-6, rtol=0)
    torch.testing.assert_close(ms_ssim3d_pairs(vols[:1]), torch.ones(1, 1))


def test_chunk_size_does_not_change_result():
    vols = _volumes(5, (24, 28, 26), seed=2)
    reference = ms_ssim3d_pairs(vols, chunk=1000)
    for chunk in (1, 3, 10):
        torch.testing.assert_close(ms_ssim3d_pairs(vols, chunk=chunk), reference, atol=1e-6, rtol=0)


def test_pairs_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N,1,D,H,W\]"):
        ms_ssim3d_pairs(torch.rand(32))
    with pytest.raises(ValueError, match=r"\[N,1,D,H,W\]"):
        ms_ssim3d_pairs(torch.rand(32, 32, 32))  # a single volume, no N
    with pytest.raises(ValueError, match=r"\[N,1,D,H,W\]"):
        ms_ssim3d_pairs(torch.rand(3, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="at least 1"):
        ms_ssim3d_pairs(torch.rand(0, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="at least 7"):
        ms_ssim3d_pairs(torch.rand(3, 1, 5, 32, 32))
    with pytest.raises(ValueError, match="smaller than win_size"):
        ms_ssim3d_pairs(torch.rand(3, 1, 32, 32, 32), win_size=11, weights=[0.2] * 5)
    with pytest.raises(ValueError, match="odd"):
        ms_ssim3d_pairs(torch.rand(3, 1, 32, 32, 32), win_size=4)
    with pytest.raises(ValueError, match="chunk"):
        ms_ssim3d_pairs(torch.rand(3, 1, 32, 32, 32), chunk=0)
