"""Metrics for segmentation utility, image similarity, rater agreement and re-identification.

Conventions
-----------
* ``dice``: integer label maps ``[B, D, H, W]`` (or ``[D, H, W]`` = one volume). One score per
  volume and foreground class 1..num_classes-1; background 0 is never scored. A class absent
  from both prediction and target gives NaN (nothing to score); a class present in only one
  of them gives 0.
* ``ms_ssim3d``: 3D multi-scale SSIM (Wang, Simoncelli & Bovik 2003) computed the way
  pytorch-msssim does it (separable Gaussian window with sigma 1.5, 'valid' filtering,
  K1=0.01, K2=0.03, 2x average pooling between scales), but with a window size and number
  of scales chosen from the smallest spatial size so that 32^3 patches and typical brain
  volumes are valid. With s = min(D, H, W): s >= 161 -> window 11, 5 scales (pytorch-msssim's
  defaults); 81..160 -> 11, 4; 41..80 -> 11, 3; 25..40 -> 7, 3; 13..24 -> 7, 2; 7..12 -> 7, 1
  (see ``ms_ssim3d_settings``). Pure torch: runs on the inputs' device and keeps gradients.
  ``ms_ssim3d_pairs`` gives the same values for all pairs of N volumes at once, faster.
* ``icc``: intraclass correlation (McGraw & Wong 1996) for ``[n_subjects, k]`` ratings,
  with its F-test and confidence interval. Subjects (rows) containing NaN are dropped.
* ``retrieval``: leave-one-out nearest-neighbour re-identification from a square distance
  matrix; ties are broken by the lower scan index everywhere.
* ``region_scores``: BraTS's regions (whole tumor NCR+ED+ET, tumor core NCR+ET, enhancing
  tumor ET) as label unions, Dice and HD95 in mm; a region absent from both maps scores Dice 1
  and HD95 0, one present in only one map Dice 0 and HD95 = the volume's diagonal (the BraTS
  challenge's conventions; 373.13 mm for its 240x240x155 volumes at 1 mm).
* ``residual_correlation`` and ``linkage``: probes (e.g. proxies) against a labelled gallery of
  clean scans, by correlation after removing the population mean; top-k identification, mAP
  and chance.

Invalid inputs raise ``ValueError`` with a message saying what was expected.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

__all__ = [
    "dice",
    "ms_ssim3d",
    "ms_ssim3d_pairs",
    "ms_ssim3d_settings",
    "MS_SSIM_WEIGHTS",
    "ICCResult",
    "icc",
    "retrieval",
    "residual_correlation",
    "linkage",
]


# --------------------------------------------------------------------------- Dice


def dice(pred: Any, target: Any, num_classes: int) -> torch.Tensor:
    """Per-volume, per-class Dice of integer label maps, background excluded.

    Returns a float32 tensor ``[B, num_classes - 1]`` (column c-1 is class c). NaN where the
    class is absent from both maps, 0 where it is present in only one.
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"dice: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.ndim != 4:
        raise ValueError(f"dice: expected label maps [B,D,H,W] or [D,H,W], got shape {tuple(pred.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("dice: expected integer label maps, got floating-point tensors (use argmax first)")
    if num_classes < 2:
        raise ValueError(f"dice: num_classes must be >= 2 (background + at least one class), got {num_classes}")
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"dice: {name} has labels outside 0..{num_classes - 1}")

    p = pred.reshape(pred.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    scores = []
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        inter = (pc & tc).sum(1).double()
        total = (pc.sum(1) + tc.sum(1)).double()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan))
    return torch.stack(scores, dim=1).float()


# --------------------------------------------------------------------------- MS-SSIM

#: Five-scale weights of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def _num_scales(smallest: int, win_size: int) -> int:
    """Largest L in 1..5 with smallest > (win_size - 1) * 2**(L - 1); 0 if none."""
    return max((L for L in range(1, 6) if smallest > (win_size - 1) * 2 ** (L - 1)), default=0)


def _default_weights(smallest: int, win_size: int) -> tuple[float, ...]:
    """Paper weights for all 5 scales, else the first L renormalised to sum to 1 (empty: nothing fits)."""
    L = _num_scales(smallest, win_size)
    if L == 5:
        return MS_SSIM_WEIGHTS  # as published (they sum to 1.0001) and as pytorch-msssim uses them
    return tuple(w / sum(MS_SSIM_WEIGHTS[:L]) for w in MS_SSIM_WEIGHTS[:L])


def ms_ssim3d_settings(shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """Window size and per-scale weights that ``ms_ssim3d`` uses for a volume of this shape.

    ``shape`` is ``(D, H, W)``; longer shapes such as ``(B, 1, D, H, W)`` use their last three
    entries. With s = min(D, H, W):

    ==========  ======  ======
    s           window  scales
    ==========  ======  ======
    >= 161      11      5  (pytorch-msssim's defaults)
    81..160     11      4
    41..80      11      3
    25..40      7       3
    13..24      7       2
    7..12       7       1
    < 7         ValueError
    ==========  ======  ======

    The window is 11 if s > 40, else 7; the number of scales L is the largest in 1..5 with
    s > (window - 1) * 2**(L - 1), so the coarsest scale is still at least one window wide.
    The weights are ``MS_SSIM_WEIGHTS`` unchanged for 5 scales (so s >= 161 reproduces
    ``pytorch_msssim.ms_ssim``), otherwise their first L renormalised to sum to 1.
    """
    if len(shape) < 3:
        raise ValueError(f"ms_ssim3d: need a 3D spatial shape (D, H, W), got {tuple(shape)}")
    s = min(int(n) for n in shape[-3:])
    if s < 7:
        raise ValueError(f"ms_ssim3d: smallest spatial size is {s}; at least 7 is needed")
    win_size = 11 if s > 40 else 7
    return win_size, _default_weights(s, win_size)


def _gaussian_window(win_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1D Gaussian (sigma 1.5) on coords arange(win) - win//2, summing to 1."""
    coords = torch.arange(win_size, dtype=torch.float64) - win_size // 2
    g = torch.exp(-(coords**2) / (2 * _SIGMA**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of every channel of ``[B, C, D, H, W]`` along D, H and W."""
    c = maps.shape[1]
    n = g.numel()
    for kernel_shape in ((n, 1, 1), (1, n, 1), (1, 1, n)):
        weight = g.reshape(1, 1, *kernel_shape).expand(c, 1, *kernel_shape)
        maps = F.conv3d(maps, weight, groups=c)
    return maps


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, c1: float, c2: float):
    """Mean SSIM and mean contrast-structure term per batch element of ``[B, 1, D, H, W]`` volumes."""
    # Filter the five local moments in one grouped convolution per axis.
    mu_x, mu_y, e_xx, e_yy, e_xy = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), g).unbind(1)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def _checked_settings(spatial: tuple[int, ...], win_size: int | None, weights: Sequence[float] | None,
                      caller: str) -> tuple[int, Sequence[float]]:
    """Window size and scale weights for volumes of shape ``spatial`` (defaults from
    ``ms_ssim3d_settings``); ValueError when the window does not fit the coarsest scale."""
    if win_size is None:
        win_size = ms_ssim3d_settings(spatial)[0]
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"{caller}: win_size must be a positive odd number, got {win_size}")
    if weights is None:
        weights = _default_weights(min(spatial), win_size)
    if len(weights) == 0:
        raise ValueError(f"{caller}: volume {spatial} is too small for win_size {win_size}")
    coarsest = list(spatial)
    for _ in range(len(weights) - 1):
        coarsest = [(n + 1) // 2 for n in coarsest]
    if min(coarsest) < win_size:
        raise ValueError(f"{caller}: {len(weights)} scales of {spatial} end at {tuple(coarsest)}, "
                         f"smaller than win_size {win_size}")
    return win_size, weights


def ms_ssim3d(
    x: Any,
    y: Any,
    data_range: float = 1.0,
    *,
    win_size: int | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """3D multi-scale SSIM of two volumes ``[D,H,W]`` (0-dim result) or batches ``[B,1,D,H,W]`` (``[B]``).

    Window size and weights default to ``ms_ssim3d_settings(x.shape)``. ``win_size`` and/or
    ``weights`` override them (weights are then used as given, one per scale, as in
    pytorch-msssim); a window that no longer fits the coarsest scale raises ValueError.
    Value = prod_{i<L} relu(cs_i)**w_i * relu(ssim_L)**w_L.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"ms_ssim3d: x and y shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    single = x.ndim == 3
    if single:
        x, y = x[None, None], y[None, None]
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"ms_ssim3d: expected [D,H,W] or [B,1,D,H,W], got shape {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x, y = x.to(dtype), y.to(dtype)

    win_size, weights = _checked_settings(tuple(x.shape[2:]), win_size, weights, "ms_ssim3d")
    g = _gaussian_window(win_size, dtype, x.device)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    terms = []
    for level in range(len(weights)):
        ssim_val, cs = _ssim_and_cs(x, y, g, c1, c2)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            padding = [n % 2 for n in x.shape[2:]]
            x = F.avg_pool3d(x, kernel_size=2, padding=padding)
            y = F.avg_pool3d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_val))
    w = torch.tensor(list(weights), dtype=dtype, device=x.device).view(-1, 1)
    value = torch.prod(torch.stack(terms) ** w, dim=0)
    return value[0] if single else value


def _blur_by_shifts(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The filtering of ``_blur`` as sums of weighted, shifted views (equal up to float rounding).

    On CPU this is several times faster than ``conv3d`` for batches of single-channel maps.
    """
    taps = g.tolist()
    for dim in (2, 3, 4):
        size = maps.shape[dim] - len(taps) + 1
        out = maps.narrow(dim, 0, size) * taps[0]
        for k in range(1, len(taps)):
            out.add_(maps.narrow(dim, k, size), alpha=taps[k])
        maps = out
    return maps


def ms_ssim3d_pairs(
    volumes: Any,
    data_range: float = 1.0,
    *,
    win_size: int | None = None,
    weights: Sequence[float] | None = None,
    chunk: int = 8,
) -> torch.Tensor:
    """Symmetric ``[N, N]`` matrix of ``ms_ssim3d`` between all pairs of ``volumes [N,1,D,H,W]`` or ``[N,D,H,W]``.

    Same definition, settings and argument checks as ``ms_ssim3d``: entry [i, j] equals
    ``ms_ssim3d(volumes[i], volumes[j])`` up to float rounding, and the diagonal is 1 (what
    ``ms_ssim3d(v, v)`` gives). Faster than a loop over pairs because everything that depends
    on one volume is computed once and shared by its N - 1 pairs: its pyramid and, at every
    scale, its blurred mean and variance. A pair only adds its cross moment blur(x_i * x_j)
    (one map to filter instead of five) and a few elementwise operations. Pairs of the upper
    triangle go through the filter ``chunk`` at a time (bounding memory); the result is mirrored.
    """
    v = torch.as_tensor(volumes)
    if v.ndim == 4:
        v = v[:, None]
    if v.ndim != 5 or v.shape[1] != 1:
        raise ValueError(f"ms_ssim3d_pairs: expected volumes [N,1,D,H,W] or [N,D,H,W], got shape {tuple(v.shape)}")
    n = v.shape[0]
    if n < 1:
        raise ValueError("ms_ssim3d_pairs: need at least 1 volume, got 0")
    if chunk < 1:
        raise ValueError(f"ms_ssim3d_pairs: chunk must be >= 1, got {chunk}")
    dtype = v.dtype if v.dtype.is_floating_point else torch.get_default_dtype()
    v = v.to(dtype)

    win_size, weights = _checked_settings(tuple(v.shape[2:]), win_size, weights, "ms_ssim3d_pairs")
    out = torch.ones(n, n, dtype=dtype, device=v.device)
    if n == 1:
        return out

    g = _gaussian_window(win_size, dtype, v.device)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    terms = []  # per scale, for the pairs i < j in row-major order: relu(cs), or relu(ssim) at the coarsest
    for level in range(len(weights)):
        last = level == len(weights) - 1
        mu, e_xx = _blur_by_shifts(torch.cat([v, v * v], dim=1), g).unbind(1)  # once per volume
        var = e_xx - mu**2
        values = []
        for i in range(n - 1):
            for start in range(i + 1, n, chunk):
                j = slice(start, start + chunk)
                e_xy = _blur_by_shifts(v[i : i + 1] * v[j], g)[:, 0]  # the only per-pair filtering
                cs_map = (2 * (e_xy - mu[i] * mu[j]) + c2) / (var[i] + var[j] + c2)
                if last:  # ssim map = luminance * cs
                    cs_map = (2 * mu[i] * mu[j] + c1) / (mu[i] ** 2 + mu[j] ** 2 + c1) * cs_map
                values.append(cs_map.flatten(1).mean(1))
        terms.append(torch.relu(torch.cat(values)))
        if not last:
            padding = [s % 2 for s in v.shape[2:]]
            v = F.avg_pool3d(v, kernel_size=2, padding=padding)
    w = torch.tensor(list(weights), dtype=dtype, device=v.device).view(-1, 1)
    upper = torch.prod(torch.stack(terms) ** w, dim=0)  # prod_{l<L} relu(cs_l)**w_l * relu(ssim_L)**w_L

    rows, cols = torch.triu_indices(n, n, offset=1, device=v.device)  # the same row-major order
    return out.index_put((rows, cols), upper).index_put((cols, rows), upper)


# --------------------------------------------------------------------------- ICC


@dataclass(frozen=True)
class ICCResult:
    """An ICC estimate with its (1 - alpha) confidence interval and F-test against ICC = 0."""

    value: float
    lower: float
    upper: float
    kind: str
    F: float
    df1: float
    df2: float
    pvalue: float
    n: int  # subjects used (after dropping rows with NaN)
    k: int  # raters / measurements per subject


_ICC_KINDS = ("A,1", "C,1", "1,1")


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def icc(ratings: Any, kind: str = "A,1", alpha: float = 0.05) -> ICCResult:
    """Single-measure intraclass correlation of ``ratings [n_subjects, k]`` (McGraw & Wong 1996).

    kind: "A,1" two-way, absolute agreement (= Shrout & Fleiss ICC(2,1));
    "C,1" two-way, consistency (= ICC(3,1)); "1,1" one-way random (= ICC(1,1)).
    Rows containing NaN are dropped (a subject needs all k ratings). Bounds use McGraw &
    Wong's formulas; for "A,1" with a Satterthwaite-type denominator df.
    """
    if kind not in _ICC_KINDS:
        raise ValueError(f"icc: unknown kind {kind!r}; expected one of {', '.join(_ICC_KINDS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"icc: alpha must be in (0, 1), got {alpha}")
    x = _as_numpy(ratings).astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"icc: expected ratings [n_subjects, k], got shape {x.shape}")
    x = x[~np.isnan(x).any(axis=1)]
    n, k = x.shape
    if k < 2 or n < 2:
        raise ValueError(f"icc: need at least 2 subjects without NaN and 2 raters, got n={n}, k={k}")

    grand = x.mean()
    row_means, col_means = x.mean(axis=1), x.mean(axis=0)
    ms_rows = k * np.sum((row_means - grand) ** 2) / (n - 1)
    ms_cols = n * np.sum((col_means - grand) ** 2) / (k - 1)
    ms_within = np.sum((x - row_means[:, None]) ** 2) / (n * (k - 1))
    resid = x - row_means[:, None] - col_means[None, :] + grand
    ms_err = np.sum(resid**2) / ((n - 1) * (k - 1))

    q = 1 - alpha / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind in ("1,1", "C,1"):
            ms_noise, df2 = (ms_within, n * (k - 1)) if kind == "1,1" else (ms_err, (n - 1) * (k - 1))
            value = (ms_rows - ms_noise) / (ms_rows + (k - 1) * ms_noise)
            f_stat = ms_rows / ms_noise
            f_low = f_stat / scipy.stats.f.ppf(q, n - 1, df2)
            f_up = f_stat * scipy.stats.f.ppf(q, df2, n - 1)
            # (F - 1) / (F + k - 1), written so that F = inf gives 1.
            lower, upper = 1 - k / (f_low + k - 1), 1 - k / (f_up + k - 1)
        else:  # "A,1"
            df2 = (n - 1) * (k - 1)
            value = (ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n)
            f_stat = ms_rows / ms_err
            if value >= 1:  # perfect agreement: the interval degenerates to the point 1
                lower = upper = 1.0
            else:
                a = k * value / (n * (1 - value))
                b = 1 + k * value * (n - 1) / (n * (1 - value))
                v = (a * ms_cols + b * ms_err) ** 2 / (
                    (a * ms_cols) ** 2 / (k - 1) + (b * ms_err) ** 2 / ((n - 1) * (k - 1))
                )
                f_s = scipy.stats.f.ppf(q, n - 1, v)
                f_s2 = scipy.stats.f.ppf(q, v, n - 1)
                common = k * ms_cols + (k * n - k - n) * ms_err
                lower = n * (ms_rows - f_s * ms_err) / (f_s * common + n * ms_rows)
                upper = n * (f_s2 * ms_rows - ms_err) / (common + n * f_s2 * ms_rows)
        pvalue = scipy.stats.f.sf(f_stat, n - 1, df2)
    return ICCResult(
        value=float(value),
        lower=float(lower),
        upper=float(upper),
        kind=kind,
        F=float(f_stat),
        df1=float(n - 1),
        df2=float(df2),
        pvalue=float(pvalue),
        n=int(n),
        k=int(k),
    )


# --------------------------------------------------------------------------- re-identification


def retrieval(distance: Any, subject_ids: Sequence[Any]) -> dict:
    """Leave-one-out nearest-neighbour re-identification from a square distance matrix ``[N, N]``.

    Every scan i is a query against all other scans (the diagonal is ignored); its predicted
    subject is that of the nearest other scan, ties going to the lower index. Returns
    ``top1`` (accuracy), ``f1`` (macro F1 over the subjects that occur, a never-predicted or
    singleton subject scoring 0), ``map`` (mean average precision over the ``n_map_queries``
    queries whose subject has another scan; NaN if there are none), ``n_queries`` and
    ``chance`` (expected top-1 accuracy of guessing a random other scan).
    """
    d = _as_numpy(distance).astype(np.float64)
    if isinstance(subject_ids, torch.Tensor):
        subject_ids = subject_ids.tolist()
    ids = list(subject_ids.tolist() if isinstance(subject_ids, np.ndarray) else subject_ids)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"retrieval: distance must be a square [N, N] matrix, got shape {d.shape}")
    n = d.shape[0]
    if len(ids) != n:
        raise ValueError(f"retrieval: {len(ids)} subject ids for a {n}x{n} distance matrix")
    if n < 2:
        raise ValueError("retrieval: need at least 2 scans")
    off_diagonal = ~np.eye(n, dtype=bool)
    if np.isnan(d[off_diagonal]).any():
        raise ValueError("retrieval: distance matrix has NaN off the diagonal")

    codes = {s: c for c, s in enumerate(dict.fromkeys(ids))}  # subject -> 0..S-1, first-seen order
    true = np.array([codes[s] for s in ids])
    pred = np.empty(n, dtype=int)
    aps, chance = [], []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        ranked = others[np.argsort(d[i, others], kind="stable")]  # ascending, ties by lower index
        pred[i] = true[ranked[0]]
        relevant = true[ranked] == true[i]
        chance.append(relevant.sum() / (n - 1))
        if relevant.any():
            hits = np.cumsum(relevant)[relevant]
            ranks = np.flatnonzero(relevant) + 1
            aps.append(np.mean(hits / ranks))

    f1s = []
    for s in range(len(codes)):
        tp = np.sum((pred == s) & (true == s))
        n_pred, n_true = np.sum(pred == s), np.sum(true == s)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    return {
        "top1": float(np.mean(pred == true)),
        "f1": float(np.mean(f1s)),
        "map": float(np.mean(aps)) if aps else float("nan"),
        "n_queries": n,
        "n_map_queries": len(aps),
        "chance": float(np.mean(chance)),
    }


# --------------------------------------------------------------------------- linkage


def residual_correlation(probes: torch.Tensor, gallery: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``[P, G]`` of every probe with every gallery volume after both lose
    ``mean`` (the population mean), over the voxels where ``mean > 0`` (inside the population's
    anatomy). Volumes are ``[N, 1, D, H, W]`` (or ``[N, D, H, W]``); ``mean`` is one volume."""
    inside = (mean > 0).flatten()

    def residuals(x: torch.Tensor) -> torch.Tensor:
        r = (x.reshape(x.shape[0], -1)[:, inside] - mean.flatten()[inside]).double()
        r = r - r.mean(1, keepdim=True)
        return r / r.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return (residuals(probes) @ residuals(gallery).T).float()


def linkage(similarity: Any, probe_ids: Sequence[Any], gallery_ids: Sequence[Any],
            exclude: Any = None, ranks: Sequence[int] = (1, 5)) -> dict:
    """Closed-set identification of P probes against a labelled gallery of G items.

    ``similarity [P, G]`` (higher is closer); ``exclude [P, G]`` marks gallery items a probe may
    not be compared with (the very scan it was made from). An identity's score is its best
    non-excluded item's. Scored are the probes whose identity keeps at least one gallery item.
    Returns ``top<k>`` (the true identity among the k best-scored identities, ties broken
    toward the lower gallery index), ``map`` (average precision of the ranked gallery items,
    relevant = the probe's identity), ``chance_top<k>`` (k over the number of identities),
    ``n_probes`` and ``n_identities``.
    """
    sim = _as_numpy(similarity).astype(np.float64)
    probes, gallery = list(probe_ids), list(gallery_ids)
    if sim.shape != (len(probes), len(gallery)):
        raise ValueError(f"linkage: similarity {sim.shape} does not match {len(probes)} probes x {len(gallery)} items")
    blocked = np.zeros(sim.shape, bool) if exclude is None else _as_numpy(exclude).astype(bool)
    identities = list(dict.fromkeys(gallery))
    codes = np.array([identities.index(g) for g in gallery])
    hits = {k: [] for k in ranks}
    aps = []
    for p, who in enumerate(probes):
        allowed = ~blocked[p]
        if who not in identities or not np.any(allowed & (codes == identities.index(who))):
            continue  # nothing of this identity left to find
        order = np.flatnonzero(allowed)[np.argsort(-sim[p, allowed], kind="stable")]
        ranked_ids = list(dict.fromkeys(codes[order]))  # identities by their best item
        position = ranked_ids.index(identities.index(who))
        for k in ranks:
            hits[k].append(position < k)
        relevant = codes[order] == identities.index(who)
        aps.append(np.mean(np.cumsum(relevant)[relevant] / (np.flatnonzero(relevant) + 1)))
    n_ids = len(identities)
    out: dict[str, float] = {f"top{k}": float(np.mean(hits[k])) if aps else float("nan") for k in ranks}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    out.update({f"chance_top{k}": min(k, n_ids) / n_ids if n_ids else float("nan") for k in ranks})
    return out | {"n_probes": len(aps), "n_identities": n_ids}


# BraTS's evaluation regions by label name: whole tumor, tumor core, enhancing tumor.
BRATS_REGIONS = (("WT", ("NCR", "ED", "ET")), ("TC", ("NCR", "ET")), ("ET", ("ET",)))


def diagonal_mm(shape: Sequence[int], spacing_mm: float) -> float:
    """The diagonal of a volume in mm: the largest distance two of its voxels can have, BraTS's
    penalty distance (``sqrt(240² + 240² + 155²) = 373.13`` for its 1 mm volumes)."""
    return float(np.sqrt(sum((n * spacing_mm) ** 2 for n in shape)))


def region_scores(pred: Any, target: Any, regions: dict[str, Sequence[int]], spacing_mm: float,
                  penalty_mm: float) -> dict[str, dict[str, float]]:
    """Dice and 95th-percentile Hausdorff distance (mm, MONAI's symmetric HD95) of label unions
    in two label maps ``[D,H,W]``, with the BraTS challenge's conventions for empty regions:
    absent from both maps, Dice 1 and HD95 0; present in only one, Dice 0 and HD95
    ``penalty_mm`` (BraTS: the volume's diagonal, :func:`diagonal_mm`)."""
    from monai.metrics import compute_hausdorff_distance

    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"region_scores: expected two label maps [D,H,W] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    out = {}
    for name, labels in regions.items():
        ids = torch.tensor(list(labels))
        p, t = torch.isin(pred, ids), torch.isin(target, ids)
        if not p.any() and not t.any():
            out[name] = {"dice": 1.0, "hd95": 0.0}
        elif not p.any() or not t.any():
            out[name] = {"dice": 0.0, "hd95": float(penalty_mm)}
        else:
            overlap = 2 * float((p & t).sum()) / float(p.sum() + t.sum())
            with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own code passes
                warnings.simplefilter("ignore", FutureWarning)
                hd95 = compute_hausdorff_distance(p[None, None].float(), t[None, None].float(),
                                                  include_background=True, percentile=95, spacing=spacing_mm)
            out[name] = {"dice": overlap, "hd95": float(hd95)}
    return out
