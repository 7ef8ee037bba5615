"""Mixup-Privacy's utility study (the paper's Table 1, Fig. 2 and Fig. 3).

:func:`evaluate_mixup` makes one server pass per test scan with ``K_max`` references: the naive,
naive+TTA, learned and learned+TTA variants, the Dice-versus-K curve, and test-retest ICC(A,1) of
the Dice obtained with two different references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from privbench import card as cards
from privbench import figures, finite
from privbench.config import RunConfig
from privbench.defenses.mixup.plots import mixup_examples, tta_curve
from privbench.evaluation import Clock, Evaluation, named, region_columns, summarise, test_scans
from privbench.metrics import dice, icc
from privbench.tasks.base import Task

TTA_CURVE_CSV, TTA_CURVE_PNG, EXAMPLES_PNG = "tta_curve.csv", "tta_curve.png", "mixup_examples.png"


def evaluate_mixup(defense: Any, task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
    """Mixup-Privacy's Table 1 study; writes the TTA curve (CSV, PNG) and the Fig. 2-style figure.

    Each test scan gets one key of ``K_max`` references and one ``a``: one batched server pass,
    both unmixings of each of the K mixed predictions, and Dice of the running TTA mean for
    K = 1..K_max. The K=1 and K=``tta`` rows are the four variants; the Dice of references 1
    and 2 alone are the test-retest pair.
    """
    m, classes = cfg.mixup, task.class_names[1:]
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, retest, example, seconds = [], {"naive": [], "learned": []}, None, []
    for scan in test_scans(task):
        image, label = task.load(scan)
        key = defense.new_key(generator, k=m.tta_max)
        clock = Clock()
        mixed = clock("server", defense.server, clock("encode", defense.encode, image[None], key))
        unmixed = {}
        for unmix in retest:
            probs = unmixed[unmix] = clock(unmix, defense.decode, mixed, key, unmix)
            counts = torch.arange(1, len(key) + 1, dtype=probs.dtype).reshape(-1, 1, 1, 1, 1)
            running = probs.cumsum(0) / counts
            targets = label[None].expand(len(key), *label.shape)
            curve = dice(running.argmax(1), targets, task.num_classes)
            for k, scores in enumerate(curve, start=1):  # regions (tumor tasks) at the variants' K only
                regions = region_columns(task, running[k - 1].argmax(0), label) if k in (1, m.tta) else {}
                rows.append({"subject": scan.subject, "session": scan.session, "a": key.a,
                             "unmix": unmix, "k": k, **named(task, scores), **regions})
            retest[unmix].append(dice(probs[:2].argmax(1), targets[:2], task.num_classes).numpy())
        seconds.append(clock.seconds)
        if example is None:
            example = (image, label, key, mixed, unmixed)
    curve = pd.DataFrame(rows)
    variants = {"naive": ("naive", 1), "naive+tta": ("naive", m.tta),
                "learned": ("learned", 1), "learned+tta": ("learned", m.tta)}
    per_scan = pd.concat([curve[(curve.unmix == u) & (curve.k == k)].assign(variant=name)
                          for name, (u, k) in variants.items()], ignore_index=True)
    region_names = [f"{name}_{metric}" for name, _ in task.regions for metric in ("dice", "hd95")]
    per_scan = per_scan[["variant", "subject", "session", "a", "k", *classes, *region_names]]
    utility = [summarise(per_scan[per_scan.variant == name], classes, name, task.regions) | {"tta": k}
               for name, (_, k) in variants.items()]

    table = tta_curve_table(curve, classes)
    cards.write_text_atomic(run_dir / TTA_CURVE_CSV, table.to_csv(index=False))
    figures.save_atomic(tta_curve(table, classes), run_dir / TTA_CURVE_PNG)
    figures.save_atomic(mixup_examples(*example, defense.num_classes), run_dir / EXAMPLES_PNG)
    timings = mixup_timings(defense, task, cfg, pd.DataFrame(seconds).mean())
    test_retest = {u: retest_icc(np.concatenate(r), classes) for u, r in retest.items()}
    return Evaluation(
        utility=utility,
        per_scan=per_scan,
        timings=timings,
        sections={
            "mixup": {"eval_a_range": [m.eval_a_min, m.eval_a_max], "tta": m.tta, "tta_max": m.tta_max,
                      "a_mean": float(curve.a.mean()), "reference_pool_scans": len(defense.pool)},
            "tta_curve": [{k: finite.none_if_nan(v) for k, v in row.items()}
                          for row in table.to_dict(orient="records")],
            "test_retest": test_retest,
        },
        files={"tta_curve_csv": TTA_CURVE_CSV, "tta_curve_png": TTA_CURVE_PNG, "examples_png": EXAMPLES_PNG},
        summary=[f"reference TTA with K={timings['tta_k']}: {timings['tta_seconds_per_volume']:.2f} s/volume",
                 *(retest_line(unmix, icc_by_class) for unmix, icc_by_class in test_retest.items())],
    )


def retest_line(unmix: str, icc_by_class: dict[str, Any]) -> str:
    """One summary line of the test-retest ICCs of an unmixing, with their 95% bounds."""
    def text(v: dict[str, Any]) -> str:
        if v["icc"] is None:
            return f"n/a ({v['n_scans']} scans score it" + (", without variance)" if v["n_scans"] >= 2 else ")")
        bounds = "" if v["lower95"] is None or v["upper95"] is None else f" [{v['lower95']:.3f}, {v['upper95']:.3f}]"
        return f"{v['icc']:.3f}{bounds}"

    return f"test-retest ICC(A,1), {unmix}: " + ", ".join(f"{c} {text(v)}" for c, v in icc_by_class.items())


def tta_curve_table(curve: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Mean Dice per class (and their mean) for every unmixing and K, over test scans."""
    table = curve.groupby(["unmix", "k"])[list(classes)].agg(lambda s: float(np.nanmean(s))).reset_index()
    table["mean"] = table[list(classes)].mean(axis=1)
    return table


def retest_icc(pairs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """ICC(A,1) with 95% bounds per class, from ``pairs`` ``[2*n_scans, classes]``: rows
    alternate between the Dice with reference 1 and with reference 2 of one scan. A class
    scored (not NaN) in fewer than two test scans has no ICC, nor one whose Dice does not vary
    (0/0, e.g. a tumor label never predicted): both are reported as None, never as NaN."""
    per_scan = pairs.reshape(-1, 2, len(classes))
    out: dict[str, Any] = {}
    for c, name in enumerate(classes):
        scored = int((~np.isnan(per_scan[:, :, c]).any(axis=1)).sum())
        if scored < 2:
            out[name] = {"icc": None, "lower95": None, "upper95": None, "pvalue": None, "n_scans": scored}
            continue
        result = icc(per_scan[:, :, c], kind="A,1")
        finite = lambda v: float(v) if v is not None and np.isfinite(v) else None  # noqa: E731
        out[name] = {"icc": finite(result.value), "lower95": finite(result.lower), "upper95": finite(result.upper),
                     "pvalue": finite(result.pvalue), "n_scans": result.n}
    return out


def mixup_timings(defense: Any, task: Task, cfg: RunConfig,
                  study: pd.Series) -> dict[str, float]:
    """Client and server costs per volume: a one-reference request on the first test scan
    (timed after the study, so the networks are warm), and the study's K_max-reference
    requests (mean seconds of its encode, server and decode stages)."""
    scan = test_scans(task)[0]
    image = task.load(scan)[0][None]
    key, clock = defense.new_key(torch.Generator().manual_seed(cfg.seed + 1), k=1), Clock()
    mixed = clock("server", defense.server, clock("encode", defense.encode, image, key))
    clock("naive", defense.decode, mixed, key, "naive")
    clock("learned", defense.decode, mixed, key, "learned")
    one, k = clock.seconds, cfg.mixup.tta_max
    return {
        "encode_ms_per_volume": 1000 * one["encode"],
        "server_ms_per_volume": 1000 * one["server"],
        "decode_naive_ms_per_volume": 1000 * one["naive"],
        "decode_learned_ms_per_volume": 1000 * one["learned"],
        "infer_seconds_per_volume": one["encode"] + one["server"] + one["learned"],
        "tta_k": k,
        "tta_seconds_per_volume": float(study["encode"] + study["server"] + study["learned"]),
        "tta_server_ms_per_mixture": 1000 * float(study["server"]) / k,
    }


