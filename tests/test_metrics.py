"""Tests for privbench.metrics against hand-computed values and independent references."""

import math

import numpy as np
import pytest
import pytorch_msssim
import scipy.stats
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

from privbench.metrics import (
    MS_SSIM_WEIGHTS,
    ICCResult,
    dice,
    icc,
    ms_ssim3d,
    ms_ssim3d_settings,
    retrieval,
)

# --------------------------------------------------------------------------- Dice


def test_dice_matches_monai_when_every_class_is_present():
    g = torch.Generator().manual_seed(0)
    num_classes = 4
    target = torch.randint(0, num_classes, (2, 8, 9, 10), generator=g)
    noise = torch.randint(0, num_classes, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.3, noise, target)
    for b in range(2):  # the reference below is only comparable when no class is empty
        assert set(pred[b].unique().tolist()) == set(target[b].unique().tolist()) == set(range(num_classes))

    def one_hot(t):
        return F.one_hot(t, num_classes).permute(0, 4, 1, 2, 3).float()

    expected = compute_dice(one_hot(pred), one_hot(target), include_background=False, ignore_empty=False)
    got = dice(pred, target, num_classes)
    assert got.shape == (2, num_classes - 1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=0)
    assert (got > 0.5).all() and (got < 1).all()  # not a trivial agreement


def test_dice_hand_computed_with_both_empty_conventions():
    # One volume [D,H,W] = [1,1,6], 5 classes.
    target = torch.tensor([[[1, 1, 1, 2, 0, 0]]])
    pred = torch.tensor([[[1, 1, 0, 0, 0, 3]]])
    got = dice(pred, target, num_classes=5)
    # class 1: |P|=2, |T|=3, overlap 2 -> 2*2/5 = 0.8
    # class 2: only in target -> 0;  class 3: only in pred -> 0;  class 4: in neither -> NaN
    assert got.shape == (1, 4)
    torch.testing.assert_close(got[0, :3], torch.tensor([0.8, 0.0, 0.0]))
    assert math.isnan(got[0, 3].item())


def test_dice_batched_numpy_input_and_perfect_match():
    labels = np.array([[[[0, 1], [2, 2]]], [[[1, 1], [0, 0]]]])  # [2,1,2,2]
    got = dice(labels, labels, num_classes=3)
    # volume 0: classes 1 and 2 both perfect; volume 1: class 1 perfect, class 2 absent -> NaN
    assert got[0].tolist() == [1.0, 1.0]
    assert got[1, 0].item() == 1.0 and math.isnan(got[1, 1].item())


def test_dice_rejects_bad_inputs():
    a = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, torch.zeros(1, 4, 4, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="labels outside"):
        dice(a, a + 2, 2)
    with pytest.raises(ValueError, match="integer"):
        dice(a.float(), a.float(), 2)
    with pytest.raises(ValueError, match=r"\[B,D,H,W\]"):
        dice(a[None], a[None], 2)


# --------------------------------------------------------------------------- MS-SSIM


def _smooth_volume(shape, generator, dtype=torch.float32):
    """Smooth random volume in [0, 1] (upsampled 8^3 noise), more image-like than white noise."""
    low = torch.rand((shape[0], 1, 8, 8, 8), generator=generator, dtype=dtype)
    return F.interpolate(low, size=shape[2:], mode="trilinear", align_corners=False)


def _noisy(x, sigma, generator):
    return (x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


def test_ms_ssim3d_equals_pytorch_msssim_defaults_on_large_volume():
    g = torch.Generator().manual_seed(1)
    x = _smooth_volume((1, 1, 165, 165, 165), g)
    y = _noisy(x, 0.05, g)
    assert ms_ssim3d_settings(x.shape) == (11, MS_SSIM_WEIGHTS)
    expected = pytorch_msssim.ms_ssim(x, y, data_range=1.0)
    got = ms_ssim3d(x, y)
    assert got.shape == (1,)
    assert abs(got.item() - expected.item()) < 1e-5
    assert 0.5 < got.item() < 0.999


@pytest.mark.parametrize(
    "shape, weights",
    [
        ((2, 1, 40, 40, 40), list(MS_SSIM_WEIGHTS)),  # 5 scales: 40 -> 20 -> 10 -> 5 -> 3
        ((2, 1, 37, 41, 43), [0.2, 0.3, 0.5]),  # odd sizes exercise the pooling padding
    ],
)
def test_ms_ssim3d_equals_pytorch_msssim_at_identical_settings(shape, weights):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = _noisy(x, 0.2, g)
    # win_size=3 passes pytorch-msssim's check min(H, W) > (3 - 1) * 16 = 32.
    expected = pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=3, weights=weights, size_average=False)
    got = ms_ssim3d(x, y, win_size=3, weights=weights)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_ms_ssim3d_default_small_window_rule_equals_pytorch_msssim():
    # s = 40 -> window 7 and 3 renormalised weights; H, W = 100 > 96 keeps pytorch-msssim's check happy.
    g = torch.Generator().manual_seed(3)
    x = torch.rand((2, 1, 40, 100, 100), generator=g, dtype=torch.float64)
    y = _noisy(x, 0.2, g)
    win, weights = ms_ssim3d_settings(x.shape)
    assert win == 7 and len(weights) == 3
    expected = pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=7, weights=list(weights), size_average=False)
    torch.testing.assert_close(ms_ssim3d(x, y), expected, atol=1e-5, rtol=0)


def test_ms_ssim3d_settings_table():
    def scales(s):
        win, weights = ms_ssim3d_settings((s, s + 5, s + 9))
        return win, len(weights)

    table = {7: (7, 1), 12: (7, 1), 13: (7, 2), 24: (7, 2), 25: (7, 3), 32: (7, 3), 40: (7, 3),
             41: (11, 3), 72: (11, 3), 80: (11, 3), 81: (11, 4), 144: (11, 4), 160: (11, 4), 161: (11, 5)}
    assert {s: scales(s) for s in table} == table
    with pytest.raises(ValueError, match="at least 7"):
        ms_ssim3d_settings((6, 64, 64))
    # The documented brain-volume shapes use their smallest side.
    assert ms_ssim3d_settings((144, 192, 160))[0] == 11 and len(ms_ssim3d_settings((144, 192, 160))[1]) == 4
    assert ms_ssim3d_settings((1, 1, 72, 96, 80))[0] == 11 and len(ms_ssim3d_settings((72, 96, 80))[1]) == 3
    w3 = ms_ssim3d_settings((32, 32, 32))[1]
    total = 0.0448 + 0.2856 + 0.3001
    assert w3 == pytest.approx((0.0448 / total, 0.2856 / total, 0.3001 / total), abs=1e-12)
    assert sum(w3) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(32, 32, 32), (72, 96, 80)])
def test_ms_ssim3d_basic_properties(shape):
    g = torch.Generator().manual_seed(4)
    x = _smooth_volume((1, 1, *shape), g)[0, 0]
    assert ms_ssim3d(x, x).item() == pytest.approx(1.0, abs=1e-6)
    values = [ms_ssim3d(x, _noisy(x, sigma, g)).item() for sigma in (0.01, 0.05, 0.2)]
    assert 1 > values[0] > values[1] > values[2] > 0
    y = _noisy(x, 0.05, g)
    v = ms_ssim3d(x, y)
    assert v.ndim == 0
    assert v.item() == pytest.approx(ms_ssim3d(y, x).item(), abs=1e-6)


def test_ms_ssim3d_full_volume_runs():
    g = torch.Generator().manual_seed(5)
    x = _smooth_volume((1, 1, 144, 192, 160), g)
    v = ms_ssim3d(x, _noisy(x, 0.05, g))
    assert v.shape == (1,) and 0.5 < v.item() < 1


def test_ms_ssim3d_batch_equals_per_item_and_keeps_gradients():
    g = torch.Generator().manual_seed(6)
    x = torch.rand((3, 1, 32, 32, 32), generator=g, dtype=torch.float64)
    y = _noisy(x, 0.1, g)
    batch = ms_ssim3d(x, y)
    assert batch.shape == (3,)
    singles = torch.stack([ms_ssim3d(x[i, 0], y[i, 0]) for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=1e-12, rtol=0)

    xg = x.clone().requires_grad_(True)
    ms_ssim3d(xg, y).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_ms_ssim3d_rejects_bad_inputs():
    x = torch.rand(32, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        ms_ssim3d(x, torch.rand(32, 32, 31))
    with pytest.raises(ValueError, match=r"\[B,1,D,H,W\]"):
        ms_ssim3d(torch.rand(1, 2, 32, 32, 32), torch.rand(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="at least 7"):
        ms_ssim3d(torch.rand(5, 32, 32), torch.rand(5, 32, 32))
    with pytest.raises(ValueError, match="smaller than win_size"):
        ms_ssim3d(x, x, win_size=11, weights=list(MS_SSIM_WEIGHTS))
    with pytest.raises(ValueError, match="odd"):
        ms_ssim3d(x, x, win_size=4)


# --------------------------------------------------------------------------- ICC

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def _mean_squares_by_loops(data):
    """BMS, WMS, JMS, EMS with explicit loops (independent of the module's vectorised code)."""
    n, k = len(data), len(data[0])
    grand = sum(sum(row) for row in data) / (n * k)
    row_means = [sum(row) / k for row in data]
    col_means = [sum(data[i][j] for i in range(n)) / n for j in range(k)]
    ss_total = ss_rows = ss_cols = 0.0
    for i in range(n):
        ss_rows += k * (row_means[i] - grand) ** 2
        for j in range(k):
            ss_total += (data[i][j] - grand) ** 2
    for j in range(k):
        ss_cols += n * (col_means[j] - grand) ** 2
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    wms = (ss_total - ss_rows) / (n * (k - 1))
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    return n, k, bms, wms, jms, ems


def _reference_bounds(data, alpha=0.05):
    """McGraw & Wong (1996) intervals written out from the loop mean squares."""
    n, k, bms, wms, jms, ems = _mean_squares_by_loops(data)
    q = 1 - alpha / 2
    out = {}
    for kind, noise, df2 in (("1,1", wms, n * (k - 1)), ("C,1", ems, (n - 1) * (k - 1))):
        f_obs = bms / noise
        fl = f_obs / scipy.stats.f.ppf(q, n - 1, df2)
        fu = f_obs * scipy.stats.f.ppf(q, df2, n - 1)
        out[kind] = ((bms - noise) / (bms + (k - 1) * noise), (fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))
    r = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    a = k * r / (n * (1 - r))
    b = 1 + k * r * (n - 1) / (n * (1 - r))
    v = (a * jms + b * ems) ** 2 / ((a * jms) ** 2 / (k - 1) + (b * ems) ** 2 / ((n - 1) * (k - 1)))
    fs, fs2 = scipy.stats.f.ppf(q, n - 1, v), scipy.stats.f.ppf(q, v, n - 1)
    low = n * (bms - fs * ems) / (fs * (k * jms + (k * n - k - n) * ems) + n * bms)
    up = n * (fs2 * bms - ems) / (k * jms + (k * n - k - n) * ems + n * fs2 * bms)
    out["A,1"] = (r, low, up)
    return out


def test_icc_loop_mean_squares_match_shrout_fleiss_table():
    # Shrout & Fleiss (1979), Table 2 analysis of variance: BMS 11.24, WMS 6.26, JMS 32.49, EMS 1.02.
    _, _, bms, wms, jms, ems = _mean_squares_by_loops(SHROUT_FLEISS)
    assert (round(bms, 2), round(wms, 2), round(jms, 2), round(ems, 2)) == (11.24, 6.26, 32.49, 1.02)


@pytest.mark.parametrize(
    "kind, value, lower, upper",
    [  # published / standard-software (e.g. pingouin, R psych) values for Table 2
        ("1,1", 0.166, -0.133, 0.723),
        ("A,1", 0.290, 0.019, 0.761),
        ("C,1", 0.715, 0.342, 0.946),
    ],
)
def test_icc_shrout_fleiss_values_and_bounds(kind, value, lower, upper):
    res = icc(SHROUT_FLEISS, kind=kind)
    assert isinstance(res, ICCResult) and res.kind == kind and (res.n, res.k) == (6, 4)
    assert round(res.value, 3) == value
    ref_value, ref_low, ref_up = _reference_bounds(SHROUT_FLEISS)[kind]
    # The independent loop computation reproduces the published bounds ...
    assert ref_low == pytest.approx(lower, abs=5e-3) and ref_up == pytest.approx(upper, abs=5e-3)
    # ... and the module agrees with it exactly.
    assert (res.value, res.lower, res.upper) == pytest.approx((ref_value, ref_low, ref_up), abs=1e-10)


def test_icc_f_test_shrout_fleiss():
    one_way, two_way = icc(SHROUT_FLEISS, "1,1"), icc(SHROUT_FLEISS, "C,1")
    # F = BMS/WMS = 11.24/6.26 and BMS/EMS = 11.24/1.02 (exact: 1.7947, 11.0272)
    assert (one_way.F, one_way.df1, one_way.df2) == (pytest.approx(1.79468, abs=1e-4), 5, 18)
    assert (two_way.F, two_way.df1, two_way.df2) == (pytest.approx(11.02725, abs=1e-4), 5, 15)
    assert one_way.pvalue == pytest.approx(0.16477, abs=1e-4)
    assert two_way.pvalue == pytest.approx(1.3457e-4, abs=1e-7)
    assert icc(SHROUT_FLEISS, "A,1").F == two_way.F


def test_icc_perfect_agreement_is_one():
    ratings = np.array([[1, 1, 1], [2, 2, 2], [4, 4, 4], [7, 7, 7]])
    for kind in ("A,1", "C,1", "1,1"):
        res = icc(ratings, kind)
        assert (res.value, res.lower, res.upper) == (1.0, 1.0, 1.0)


def test_icc_constant_offset_lowers_agreement_but_not_consistency():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=20)
    ratings = np.stack([truth + 0.3 * rng.normal(size=20) for _ in range(3)], axis=1)
    shifted = ratings.copy()
    shifted[:, 1] += 2.0
    assert icc(shifted, "C,1").value == pytest.approx(icc(ratings, "C,1").value, abs=1e-12)
    assert icc(shifted, "A,1").value < icc(ratings, "A,1").value - 0.2
    # Torch input gives the same result.
    assert icc(torch.tensor(shifted), "A,1") == icc(shifted, "A,1")


def test_icc_drops_rows_with_nan():
    with_nan = SHROUT_FLEISS + [[1.0, float("nan"), 3.0, 4.0]]
    assert icc(with_nan, "A,1") == icc(SHROUT_FLEISS, "A,1")


def test_icc_rejects_bad_inputs():
    with pytest.raises(ValueError, match="unknown kind"):
        icc(SHROUT_FLEISS, kind="2,1")
    with pytest.raises(ValueError, match="shape"):
        icc([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        icc([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="at least 2"):
        icc([[1.0, 2.0], [np.nan, 1.0]])


# --------------------------------------------------------------------------- retrieval


def _symmetric(n, pairs):
    d = np.zeros((n, n))
    for (i, j), v in pairs.items():
        d[i, j] = d[j, i] = v
    return d


def test_retrieval_hand_computed_with_singleton():
    ids = ["a", "a", "b", "b", "c"]
    d = _symmetric(5, {(0, 1): 1, (0, 2): 2, (0, 3): 5, (0, 4): 3, (1, 2): 0.5,
                       (1, 3): 4, (1, 4): 6, (2, 3): 3, (2, 4): 1, (3, 4): 2})
    # query 0 (a): ranking 1,2,4,3 -> predicts a (correct); relevant at rank 1 -> AP 1
    # query 1 (a): ranking 2,0,3,4 -> predicts b; relevant at rank 2 -> AP 1/2
    # query 2 (b): ranking 1,4,0,3 -> predicts a; relevant at rank 4 -> AP 1/4
    # query 3 (b): ranking 4,2,1,0 -> predicts c; relevant at rank 2 -> AP 1/2
    # query 4 (c): ranking 2,3,0,1 -> predicts b; singleton, skipped for mAP
    # top1 = 1/5.  F1: a: P=1/2 (q0 of q0,q2), R=1/2 -> 1/2; b: 0; c: 0 -> macro 1/6
    # mAP = (1 + 1/2 + 1/4 + 1/2) / 4 = 0.5625;  chance = (4 * 1/4 + 0) / 5 = 0.2
    r = retrieval(d, ids)
    assert r == {"top1": pytest.approx(0.2), "f1": pytest.approx(1 / 6), "map": pytest.approx(0.5625),
                 "n_queries": 5, "n_map_queries": 4, "chance": pytest.approx(0.2)}


def test_retrieval_two_relevant_scans_and_skipped_singleton():
    ids = np.array([7, 7, 7, 9])
    d = _symmetric(4, {(0, 1): 1, (0, 2): 3, (0, 3): 2, (1, 2): 4, (1, 3): 5, (2, 3): 6})
    d[np.diag_indices(4)] = -1.0  # the diagonal must be ignored even when it is the smallest
    # q0: ranking 1,3,2 -> relevant at ranks 1 and 3 -> AP (1/1 + 2/3)/2 = 5/6; predicts 7 (correct)
    # q1: ranking 0,2,3 -> AP 1, correct;  q2: ranking 0,1,3 -> AP 1, correct
    # q3 (9, singleton): predicts 7, wrong, skipped for mAP
    # top1 = 3/4; F1: 7: P=3/4, R=1 -> 6/7; 9: 0 -> macro 3/7
    # mAP = (5/6 + 1 + 1)/3 = 17/18; chance = (3 * 2/3 + 0)/4 = 1/2
    r = retrieval(torch.tensor(d), torch.tensor(ids))
    assert r["top1"] == pytest.approx(0.75)
    assert r["f1"] == pytest.approx(3 / 7)
    assert r["map"] == pytest.approx(17 / 18)
    assert (r["n_queries"], r["n_map_queries"]) == (4, 3)
    assert r["chance"] == pytest.approx(0.5)


def test_retrieval_ties_go_to_lower_index():
    # All off-diagonal distances equal: every query ranks the other scans by index.
    # q0 (x): ranking 1(y),2,3 -> predicts y; relevant at ranks 2, 3 -> AP (1/2 + 2/3)/2 = 7/12
    # q1 (y): ranking 0,2,3 -> predicts x; no other y scan, skipped for mAP
    # q2 (x): ranking 0,1,3 -> predicts x; relevant at ranks 1, 3 -> AP 5/6;  q3 (x): same as q2
    # top1 = 2/4; mAP = (7/12 + 5/6 + 5/6)/3 = 3/4  (ties to the higher index would give 3/4 and 8/9)
    r = retrieval(np.ones((4, 4)), ["x", "y", "x", "x"])
    assert r["top1"] == pytest.approx(0.5)
    assert r["map"] == pytest.approx(0.75)
    assert r["n_map_queries"] == 3


def test_retrieval_perfect_distances():
    ids = [0, 0, 1, 1, 2, 2]
    same = np.equal.outer(ids, ids)
    d = torch.tensor(np.where(same, 0.1, 1.0))
    r = retrieval(d, ids)
    assert (r["top1"], r["f1"], r["map"]) == (1.0, 1.0, 1.0)
    assert r["chance"] == pytest.approx(1 / 5)


def test_retrieval_rejects_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        retrieval(np.zeros((3, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="subject ids"):
        retrieval(np.zeros((3, 3)), [0, 1])
    bad = np.ones((3, 3))
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval(bad, [0, 1, 2])


def _box(shape=(24, 24, 24), **labels):
    """A label map with boxes: ``labels[name] = (label, (d0, d1), (h0, h1), (w0, w1))``."""
    volume = torch.zeros(shape, dtype=torch.long)
    for value, d, h, w in labels.values():
        volume[d[0]:d[1], h[0]:h[1], w[0]:w[1]] = value
    return volume


REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


@pytest.mark.parametrize("pred, target, expected", [
    # edema box shifted by 2 voxels along one axis (2 mm voxels): WT Dice 0.8, HD95 4 mm
    (_box(ed=(2, (7, 17), (4, 14), (4, 14))), _box(ed=(2, (5, 15), (4, 14), (4, 14))),
     {"WT": (0.8, 4.0), "TC": (1.0, 0.0), "ET": (1.0, 0.0)}),  # no core in either: BraTS gives 1 and 0
    # enhancing tumor predicted where the truth has none, core labelled NCR instead of ET
    (_box(ed=(2, (4, 14), (4, 14), (4, 14)), et=(3, (6, 8), (6, 8), (6, 8))),
     _box(ed=(2, (4, 14), (4, 14), (4, 14)), ncr=(1, (6, 8), (6, 8), (6, 8))),
     {"WT": (1.0, 0.0), "TC": (1.0, 0.0), "ET": (0.0, 50.0)}),  # present in one map only: the penalty
])
def test_brats_regions_follow_the_challenge_s_conventions(pred, target, expected):
    from privbench.metrics import region_scores

    scores = region_scores(pred, target, REGIONS, spacing_mm=2.0, penalty_mm=50.0)
    assert {name: (round(s["dice"], 6), round(s["hd95"], 6)) for name, s in scores.items()} == expected


def test_the_penalty_distance_is_the_volume_diagonal():
    from privbench.metrics import diagonal_mm

    assert diagonal_mm((240, 240, 155), 1.0) == pytest.approx(373.1287, abs=1e-4)  # BraTS's
    assert diagonal_mm((72, 96, 80), 2.0) == pytest.approx(diagonal_mm((144, 192, 160), 1.0))
