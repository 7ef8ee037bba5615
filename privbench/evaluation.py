"""Utility evaluation of a trained defense on the task's test scans.

Every defense gets :func:`evaluate_default`: one request per test scan through its
client-server protocol, Dice per class and the time of each stage. Mixup-Privacy gets
:func:`evaluate_mixup`, the paper's Table 1 study from one server pass per scan with ``K_max``
references: the naive, naive+TTA, learned and learned+TTA variants, the Dice-versus-K curve, and
test-retest ICC(A,1) of the Dice obtained with two different references.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from privbench import card as cards
from privbench import figures, finite
from privbench.config import RunConfig
from privbench.errors import PrivbenchError
from privbench.metrics import dice, icc
from privbench.tasks.base import Task

if TYPE_CHECKING:
    from privbench.defenses.base import Defense
    from privbench.defenses.mixup import MixupPrivacy

PER_SCAN = "per_scan_dice.csv"
TTA_CURVE_CSV, TTA_CURVE_PNG, EXAMPLES_PNG = "tta_curve.csv", "tta_curve.png", "mixup_examples.png"
PROTOCOL_PNG = "proxy_examples.png"


@dataclass
class Evaluation:
    """What an evaluation adds to the card: utility rows (one per variant), per-scan scores,
    timings, extra card sections, and the files it wrote into the run folder."""

    utility: list[dict[str, Any]]
    per_scan: pd.DataFrame
    timings: dict[str, float]
    sections: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def evaluate_default(defense: "Defense", task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
    """One request per test scan (no TTA): Dice per class, the client's and the server's time
    per volume, and a figure of the first scan's request (``proxy_examples.png``)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, example = [], None
    for scan in _test_scans(task):
        image, label = task.load(scan)
        key, clock = defense.new_key(generator), _Clock()
        proxy = clock("encode", defense.encode, image[None], key)
        output = clock("server", defense.server, proxy)
        probs = clock("decode", defense.decode, output, key)
        scores = dice(probs.argmax(1), label[None], task.num_classes)[0]
        rows.append({"variant": "default", "subject": scan.subject, "session": scan.session,
                     **{f"{stage}_seconds": t for stage, t in clock.seconds.items()},
                     "seconds": sum(clock.seconds.values()), **_named(task, scores)})
        if example is None:
            example = (image, proxy, output, probs, label)
    per_scan = pd.DataFrame(rows)
    figures.save_atomic(figures.protocol_example(*example, title=defense.name), run_dir / PROTOCOL_PNG)
    return Evaluation(
        utility=[summarise(per_scan, task.class_names[1:], variant="default")],
        per_scan=per_scan,
        timings={"infer_seconds_per_volume": float(per_scan["seconds"].mean()),
                 **{f"{stage}_ms_per_volume": 1000 * float(per_scan[f"{stage}_seconds"].mean())
                    for stage in ("encode", "server", "decode")}},
        files={"examples_png": PROTOCOL_PNG},
    )


def summarise(per_scan: pd.DataFrame, classes: tuple[str, ...], variant: str) -> dict[str, Any]:
    """Mean and standard deviation over scans of each class's Dice, and their mean."""
    table = per_scan[list(classes)]
    scored = [c for c in classes if table[c].notna().any()]  # a class absent from every scan: None
    means = {c: float(np.nanmean(table[c])) if c in scored else None for c in classes}
    return {
        "variant": variant,
        "n_scans": int(len(table)),
        "dice": {**means, "mean": float(np.mean([means[c] for c in scored])) if scored else None},
        "dice_std": {c: float(np.nanstd(table[c])) if c in scored else None for c in classes},
    }


def evaluate_mixup(defense: "MixupPrivacy", task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
    """Mixup-Privacy's Table 1 study; writes the TTA curve (CSV, PNG) and the Fig. 2-style figure.

    Each test scan gets one key of ``K_max`` references and one ``a``: one batched server pass,
    both unmixings of each of the K mixed predictions, and Dice of the running TTA mean for
    K = 1..K_max. The K=1 and K=``tta`` rows are the four variants; the Dice of references 1
    and 2 alone are the test-retest pair.
    """
    m, classes = cfg.mixup, task.class_names[1:]
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, retest, example, seconds = [], {"naive": [], "learned": []}, None, []
    for scan in _test_scans(task):
        image, label = task.load(scan)
        key = defense.new_key(generator, k=m.tta_max)
        clock = _Clock()
        mixed = clock("server", defense.server, clock("encode", defense.encode, image[None], key))
        unmixed = {}
        for unmix in retest:
            probs = unmixed[unmix] = clock(unmix, defense.decode, mixed, key, unmix)
            counts = torch.arange(1, len(key) + 1, dtype=probs.dtype).reshape(-1, 1, 1, 1, 1)
            running = probs.cumsum(0) / counts
            targets = label[None].expand(len(key), *label.shape)
            curve = dice(running.argmax(1), targets, task.num_classes)
            for k, scores in enumerate(curve, start=1):
                rows.append({"subject": scan.subject, "session": scan.session, "a": key.a,
                             "unmix": unmix, "k": k, **_named(task, scores)})
            retest[unmix].append(dice(probs[:2].argmax(1), targets[:2], task.num_classes).numpy())
        seconds.append(clock.seconds)
        if example is None:
            example = (image, label, key, mixed, unmixed)
    curve = pd.DataFrame(rows)
    variants = {"naive": ("naive", 1), "naive+tta": ("naive", m.tta),
                "learned": ("learned", 1), "learned+tta": ("learned", m.tta)}
    per_scan = pd.concat([curve[(curve.unmix == u) & (curve.k == k)].assign(variant=name)
                          for name, (u, k) in variants.items()], ignore_index=True)
    per_scan = per_scan[["variant", "subject", "session", "a", "k", *classes]]
    utility = [summarise(per_scan[per_scan.variant == name], classes, name) | {"tta": k}
               for name, (_, k) in variants.items()]

    table = tta_curve_table(curve, classes)
    cards.write_text_atomic(run_dir / TTA_CURVE_CSV, table.to_csv(index=False))
    figures.save_atomic(figures.tta_curve(table, classes), run_dir / TTA_CURVE_PNG)
    figures.save_atomic(figures.mixup_examples(*example, defense.num_classes), run_dir / EXAMPLES_PNG)
    return Evaluation(
        utility=utility,
        per_scan=per_scan,
        timings=mixup_timings(defense, task, cfg, pd.DataFrame(seconds).mean()),
        sections={
            "mixup": {"eval_a_range": [m.eval_a_min, m.eval_a_max], "tta": m.tta, "tta_max": m.tta_max,
                      "a_mean": float(curve.a.mean()), "reference_pool_scans": len(defense.pool)},
            "tta_curve": [{k: finite.none_if_nan(v) for k, v in row.items()}
                          for row in table.to_dict(orient="records")],
            "test_retest": {u: retest_icc(np.concatenate(r), classes) for u, r in retest.items()},
        },
        files={"tta_curve_csv": TTA_CURVE_CSV, "tta_curve_png": TTA_CURVE_PNG, "examples_png": EXAMPLES_PNG},
    )


def tta_curve_table(curve: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Mean Dice per class (and their mean) for every unmixing and K, over test scans."""
    table = curve.groupby(["unmix", "k"])[list(classes)].agg(lambda s: float(np.nanmean(s))).reset_index()
    table["mean"] = table[list(classes)].mean(axis=1)
    return table


def retest_icc(pairs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """ICC(A,1) with 95% bounds per class, from ``pairs`` ``[2*n_scans, classes]``: rows
    alternate between the Dice with reference 1 and with reference 2 of one scan. A class
    scored (not NaN) in fewer than two test scans has no ICC: it is reported as None."""
    per_scan = pairs.reshape(-1, 2, len(classes))
    out: dict[str, Any] = {}
    for c, name in enumerate(classes):
        scored = int((~np.isnan(per_scan[:, :, c]).any(axis=1)).sum())
        if scored < 2:
            out[name] = {"icc": None, "lower95": None, "upper95": None, "pvalue": None, "n_scans": scored}
            continue
        result = icc(per_scan[:, :, c], kind="A,1")
        out[name] = {"icc": result.value, "lower95": result.lower, "upper95": result.upper,
                     "pvalue": result.pvalue, "n_scans": result.n}
    return out


def mixup_timings(defense: "MixupPrivacy", task: Task, cfg: RunConfig,
                  study: pd.Series) -> dict[str, float]:
    """Client and server costs per volume: a one-reference request on the first test scan
    (timed after the study, so the networks are warm), and the study's K_max-reference
    requests (mean seconds of its encode, server and decode stages)."""
    scan = _test_scans(task)[0]
    image = task.load(scan)[0][None]
    key, clock = defense.new_key(torch.Generator().manual_seed(cfg.seed + 1), k=1), _Clock()
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


class _Clock:
    """Calls a function and adds its wall time to ``seconds[name]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Any, *args: Any) -> Any:
        began = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
        return out


def _test_scans(task: Task) -> list:
    scans = task.scans("test")
    if not scans:
        raise PrivbenchError(f"task {task.name!r} has no test scans to evaluate")
    return scans


def _named(task: Task, scores: torch.Tensor) -> dict[str, float]:
    return {name: float(v) for name, v in zip(task.class_names[1:], scores)}
