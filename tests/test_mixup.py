import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from privbench import config, engine
from privbench.cli import app
from privbench.defenses.mixup import MixupKey, MixupPrivacy
from privbench.errors import PrivbenchError
from privbench.defenses.mixup.study import retest_icc
from privbench.mixing import mix
from privbench.registry import create_task

from helpers import CoordinateTask


def test_reference_patches_are_co_located_and_of_another_subject():
    task = CoordinateTask()
    sampler = engine.PatchSampler(task, 32, 8, seed=3, references=True)
    batch = sampler.batch(0)
    assert batch.ref_image.shape == batch.image.shape and batch.ref_label.shape == batch.label.shape
    subjects = {int(scan.session[3:]): scan.subject for scan in task.scans("train")}
    for i in range(8):
        target, partner = int(batch.label[i, 0, 0, 0]), int(batch.ref_label[i, 0, 0, 0])
        assert subjects[target] != subjects[partner]
        offset = batch.ref_image[i] - batch.image[i]  # same position: differs by the scan code only
        assert torch.all(offset == 1e6 * (partner - target))
    plain = engine.PatchSampler(task, 32, 8, seed=3).batch(0)  # the baseline's batches are unchanged
    assert torch.equal(plain.image, batch.image) and plain.ref_image is None


@pytest.fixture(scope="module")
def untrained(cache_dir):
    """A mixup system with random weights on the test cohort, in float32 for exact comparisons."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", {"train.amp": False}, defense="mixup")
        task = create_task(cfg.task.name, cfg=cfg)
    torch.manual_seed(0)
    defense = MixupPrivacy()
    defense.setup(task, cfg, torch.device("cpu"))
    image, _ = task.load(task.scans("test")[0])
    return defense, task, image[None]


def test_key_holds_distinct_pool_references_and_one_weight(untrained):
    defense, task, _ = untrained
    key = defense.new_key(torch.Generator().manual_seed(0), k=3)
    assert len(key) == 3 and len(set(key.indices)) == 3
    pool = {scan.subject for scan in task.scans("reference")}
    assert {defense.pool[i].subject for i in key.indices} <= pool
    assert not pool & set(task.subjects("test")) and pool <= set(task.subjects("train"))
    assert 0.3 <= key.a <= 0.7 and key.ref_image.shape[0] == key.ref_label.shape[0] == 3
    with pytest.raises(PrivbenchError, match="raise task.reference_subjects"):
        defense.new_key(k=len(defense.pool) + 1)


def test_tta_equals_the_mean_of_single_reference_predictions(untrained):
    defense, _, image = untrained
    key = defense.new_key(torch.Generator().manual_seed(1), k=3)
    proxy = defense.encode(image, key)
    assert proxy.shape == (3, *image.shape[1:]) and proxy.dtype == torch.float32
    batched = defense.server(proxy)
    for unmix in ("naive", "learned"):
        together = defense.decode(batched, key, unmix)
        assert together.shape == (3, 4, *image.shape[2:])
        assert torch.allclose(together.sum(1), torch.ones(1), atol=1e-5)
        alone = [defense.decode(defense.server(defense.encode(image, key.pick(k))), key.pick(k), unmix)
                 for k in range(3)]
        assert torch.allclose(together.mean(0), torch.cat(alone).mean(0), atol=1e-5)
    segmented = defense.segment(image, tta=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(segmented[0], defense.decode(batched, key, "learned").mean(0), atol=1e-6)


def test_the_key_never_reaches_the_server(untrained, monkeypatch):
    defense, _, image = untrained
    assert list(inspect.signature(MixupPrivacy.server).parameters) == ["self", "proxy"]
    received = []
    real_server = defense.server

    def spy(*args, **kwargs):
        received.append((args, kwargs))
        return real_server(*args, **kwargs)

    monkeypatch.setattr(defense, "server", spy)
    keys = []
    monkeypatch.setattr(defense, "decode", lambda out, key, unmix=None: keys.append(key) or out)
    defense.segment(image, tta=2, generator=torch.Generator().manual_seed(2))
    ((args, kwargs),) = received
    (key,) = keys
    assert not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)
    assert torch.equal(args[0], mix(image.expand(2, *image.shape[1:]), key.ref_image, key.a))
    assert not any(isinstance(arg, MixupKey) for arg in args)


def test_retest_icc_is_one_when_both_references_agree():
    dice_a = np.array([[0.9, 0.8], [0.7, 0.6], [0.8, 0.5], [0.6, 0.9]])
    pairs = np.repeat(dice_a, 2, axis=0)  # rows: scan 1 with ref 1, scan 1 with ref 2, ...
    out = retest_icc(pairs, ("A", "B"))
    assert out["A"]["icc"] == pytest.approx(1.0) and out["B"]["n_scans"] == 4
    shuffled = retest_icc(np.stack([dice_a, dice_a[::-1]], axis=1).reshape(-1, 2), ("A", "B"))
    assert shuffled["A"]["icc"] < 0.5


def test_mixup_settings_change_only_mixup_hashes():
    base = config.resolve("quick")
    assert config.config_hash(base) == config.config_hash(config.resolve("quick", {"mixup.tta": 2}))
    mixup = config.resolve("quick", defense="mixup")
    assert config.config_hash(mixup) != config.config_hash(config.resolve("quick", {"mixup.tta": 2},
                                                                          defense="mixup"))
    with pytest.raises(PrivbenchError, match="mixup.tta"):
        config.resolve("quick", {"mixup.tta": 9, "mixup.tta_max": 4})


def test_mixup_end_to_end_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["run", "--preset", "test", "--defense", "mixup", "--out",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    (card_path,) = tmp_path.glob("mni-tissue/mixup/*/card.json")
    card, run_dir = json.loads(card_path.read_text()), card_path.parent
    variants = [u["variant"] for u in card["utility"]]
    assert variants == ["naive", "naive+tta", "learned", "learned+tta"]
    assert [u["tta"] for u in card["utility"]] == [1, 2, 1, 2]
    for entry in card["utility"]:
        assert set(entry["dice"]) == {"CSF", "GM", "WM", "mean"}
        assert all(0 <= v <= 1 for v in entry["dice"].values())
    curve = pd.read_csv(run_dir / card["files"]["tta_curve_csv"])
    assert sorted(curve.k.unique()) == [1, 2, 3] and set(curve.unmix) == {"naive", "learned"}
    assert len(card["tta_curve"]) == 6
    learned_k2 = curve[(curve.unmix == "learned") & (curve.k == 2)]["mean"].item()
    assert learned_k2 == pytest.approx(card["utility"][3]["dice"]["mean"])
    for unmix in ("naive", "learned"):
        assert set(card["test_retest"][unmix]) == {"CSF", "GM", "WM"}
        assert card["test_retest"][unmix]["GM"]["n_scans"] == 2
    for name in ("tta_curve_png", "examples_png"):
        assert (run_dir / card["files"][name]).read_bytes()[:4] == b"\x89PNG"
    timings = card["timings"]
    for name in ("encode_ms_per_volume", "server_ms_per_volume", "decode_naive_ms_per_volume",
                 "decode_learned_ms_per_volume", "tta_seconds_per_volume", "train_seconds_per_iteration"):
        assert timings[name] > 0
    per_scan = pd.read_csv(run_dir / card["files"]["per_scan"])
    assert len(per_scan) == 4 * 2 and per_scan["a"].between(0.3, 0.7).all()
    assert card["mixup"]["tta"] == 2 and not list(run_dir.glob(".*tmp"))


def test_too_few_references_fail_before_training(tmp_path):
    result = CliRunner().invoke(app, ["run", "--preset", "test", "--defense", "mixup", "--out",
                                      str(tmp_path), "--set", "mixup.tta_max=50", "--quiet"])
    assert result.exit_code == 2
    assert "raise task.reference_subjects" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("**/checkpoint.pt")) and not list(tmp_path.glob("**/card.json"))


def test_retest_icc_is_none_for_a_class_scored_in_fewer_than_two_scans():
    from privbench.defenses.mixup.study import retest_icc

    # rows alternate reference 1 / reference 2 of one scan; the second class is scored in one scan only
    pairs = np.array([[0.80, np.nan], [0.82, np.nan], [0.60, 0.50], [0.62, np.nan], [0.70, 0.40], [0.71, 0.45]])
    out = retest_icc(pairs, ("A", "B"))
    assert out["B"] == {"icc": None, "lower95": None, "upper95": None, "pvalue": None, "n_scans": 1}
    constant = retest_icc(np.zeros((4, 2)), ("A", "B"))  # e.g. a tumor label never predicted: 0/0
    assert constant["A"]["icc"] is None and constant["A"]["n_scans"] == 2  # None, never NaN
    from privbench.defenses.mixup.study import retest_line

    assert retest_line("naive", constant) == ("test-retest ICC(A,1), naive: A n/a (2 scans score it, without "
                                              "variance), B n/a (2 scans score it, without variance)")
    assert out["A"]["n_scans"] == 3 and out["A"]["icc"] > 0.9
