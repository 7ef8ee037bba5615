"""The shared utility evaluation: summaries of per-scan Dice, and the default one-request-per-scan
evaluation through a defense's protocol."""

import math

import pandas as pd
import pytest
import torch

from privbench import config
from privbench.evaluation import evaluate_default, summarise
from privbench.mixing import one_hot
from privbench.registry import create_task


def test_summarise_means_stds_and_an_unscored_class():
    per_scan = pd.DataFrame({"GM": [0.8, 0.6], "WM": [0.5, float("nan")], "ET": [float("nan")] * 2})
    row = summarise(per_scan, ("GM", "WM", "ET"), variant="v")
    assert row["variant"] == "v" and row["n_scans"] == 2
    assert row["dice"]["GM"] == pytest.approx(0.7) and row["dice"]["WM"] == 0.5
    assert row["dice"]["ET"] is None and row["dice_std"]["ET"] is None  # absent from every scan: not 0
    assert row["dice"]["mean"] == pytest.approx((0.7 + 0.5) / 2)  # the mean of the scored classes
    assert row["dice_std"]["GM"] == pytest.approx(0.1)
    assert summarise(per_scan[["ET"]], ("ET",), "v")["dice"]["mean"] is None


class Oracle:
    """A defense whose client returns the truth: the default evaluation must score Dice 1."""

    name = "oracle"

    def __init__(self, task):
        self.task, self.calls = task, []

    def new_key(self, generator=None):
        return int(torch.randint(0, 10**6, (), generator=generator))

    def encode(self, image, key):
        self.calls.append(key)
        return image

    def server(self, proxy):
        scan = next(s for s in self.task.scans("test") if torch.equal(self.task.load(s)[0][None], proxy))
        return one_hot(self.task.load(scan)[1][None], self.task.num_classes)

    def decode(self, output, key):
        return output


def test_the_default_evaluation_sends_one_request_per_test_scan(tmp_path):
    cfg = config.resolve("test")
    task = create_task(cfg.task.name, cfg=cfg)
    oracle = Oracle(task)
    evaluation = evaluate_default(oracle, task, cfg, run_dir=tmp_path)
    (row,) = evaluation.utility
    assert row["n_scans"] == len(task.scans("test")) == len(oracle.calls) == len(evaluation.per_scan)
    assert all(v == 1.0 for v in row["dice"].values() if v is not None)
    assert len(set(oracle.calls)) == len(oracle.calls)  # a fresh key per request, from the run's seed
    again = Oracle(task)
    evaluate_default(again, task, cfg, run_dir=tmp_path)
    assert again.calls == oracle.calls
    assert math.isfinite(evaluation.timings["infer_seconds_per_volume"])
    assert (tmp_path / evaluation.files["examples_png"]).read_bytes()[:4] == b"\x89PNG"
