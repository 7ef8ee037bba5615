"""Linkage to a gallery of clean scans, and recovery from the K mixtures of a TTA request."""

import json

import numpy as np
import pytest
import torch

from privbench import config
from privbench.attacks import linkage as linkage_attack
from privbench.attacks import tta_average
from privbench.attacks.base import PublicPool, execute
from privbench.defenses.mixup import MixupKey, MixupPrivacy
from privbench.defenses.none import NoProxy
from privbench.metrics import linkage, residual_correlation, ms_ssim3d

from helpers import gallery_cohort


def test_linkage_ranks_identities_and_excludes_the_probe_itself():
    gallery = ["a", "a", "b", "c"]
    sim = np.array([[0.99, 0.5, 0.7, 0.1],  # probe of "a": its own scan (0) excluded, then b beats a
                    [0.1, 0.2, 0.9, 0.3]])  # probe of "b"
    exclude = np.array([[True, False, False, False], [False, False, False, False]])
    out = linkage(sim, ["a", "b"], gallery, exclude, ranks=(1, 2))
    assert out["top1"] == 0.5 and out["top2"] == 1.0
    assert out["map"] == pytest.approx((0.5 + 1.0) / 2)  # "a" found at rank 2 of the remaining items
    assert out["chance_top1"] == pytest.approx(1 / 3) and out["n_identities"] == 3
    lonely = linkage(sim, ["a", "z"], gallery, exclude)  # "z" is not in the gallery: not scored
    assert lonely["n_probes"] == 1
    with pytest.raises(ValueError, match="does not match"):
        linkage(sim[:, :3], ["a", "b"], gallery)


def test_residual_correlation_ignores_the_population_mean_and_scale():
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(8, 8, 8, generator=g) + 0.5
    subject = torch.randn(8, 8, 8, generator=g)
    other = torch.randn(8, 8, 8, generator=g)
    probes = torch.stack([mean + 0.3 * subject, mean + other])[:, None]
    gallery = torch.stack([mean + subject, mean + other])[:, None]
    corr = residual_correlation(probes, gallery, mean)
    assert corr[0, 0] == pytest.approx(1.0, abs=1e-5) and corr[1, 1] == pytest.approx(1.0, abs=1e-5)
    assert abs(corr[0, 1]) < 0.2


@pytest.fixture(scope="module")
def cohort(cache_dir):
    """The attacks' gallery cohort (tests/helpers.py)."""
    return gallery_cohort(cache_dir)


def test_linkage_of_unprotected_scans_is_perfect(cohort, tmp_path):
    cfg, task = cohort
    result = execute(linkage_attack.Linkage(), NoProxy(), task, cfg, run_dir=tmp_path)
    assert result.metrics["top1"] == 1.0 and result.metrics["map"] == 1.0
    assert result.metrics["msssim_top1"] > 0.8
    assert result.metrics["chance_top1"] == pytest.approx(1 / len(set(task.subjects("test") + task.subjects("public"))))
    assert result.settings["n_probes"] == len(task.scans("test"))
    pairs = result.settings["roc_pairs"]  # every probe against every identity but its own scan's
    assert pairs["n_positive"] == len(task.scans("test")) and pairs["n_negative"] > 0
    assert result.metrics["auc"] > 0.9 and result.metrics["tpr_at_1pct_fpr"] >= result.metrics["tpr_at_0_fpr"]


def test_a_is_estimated_from_ten_mixtures(cohort):
    cfg, task = cohort
    mean, variance = PublicPool(task).statistics()
    first = {}
    for scan in task.scans("train"):
        first.setdefault(scan.subject, scan)
    references = torch.stack([task.load(scan)[0] for scan in first.values()])
    g = torch.Generator().manual_seed(0)
    for a in (0.3, 0.5, 0.7):
        errors = []
        for scan in task.scans("test"):
            chosen = references[torch.randperm(len(references), generator=g)[:10]]
            mixtures = a * task.load(scan)[0][None] + (1 - a) * chosen
            errors.append(tta_average.estimate_a(mixtures, variance, mean > 0) - a)
        assert np.mean(np.abs(errors)) < 0.05, (a, errors)


class SameReferenceMixup(MixupPrivacy):
    """A client that sends K copies of one mixture (one reference repeated K times)."""

    def new_key(self, generator=None, k=1):
        key = super().new_key(generator, k=1)
        return MixupKey(key.ref_image.expand(k, -1, -1, -1, -1), key.ref_label.expand(k, -1, -1, -1),
                        key.indices * k, key.a)


def test_averaging_copies_of_one_reference_recovers_nothing_beyond_the_mixture(cohort, tmp_path):
    cfg, task = cohort
    defense = SameReferenceMixup()
    defense.attach(task, cfg)
    result = execute(tta_average.TtaAverage(), defense, task, cfg, run_dir=tmp_path)
    for row in result.table:
        if row["k"] > 1:  # no spread: a_hat = 1 and the guess is the mixture itself
            assert row["msssim"] == pytest.approx(row["mixture_msssim"], abs=1e-5)
    assert (tmp_path / tta_average.CSV).is_file() and (tmp_path / tta_average.PNG).is_file()


def test_the_attacker_never_receives_a_key_or_a_reference(cohort, tmp_path, monkeypatch):
    cfg, task = cohort
    defense = MixupPrivacy()
    defense.attach(task, cfg)
    keys, seen = [], []
    original_new_key = defense.new_key

    def tracked_new_key(generator=None, k=1):
        keys.append(original_new_key(generator, k=k))
        return keys[-1]

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.extend([*args, *kwargs.values()])
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(defense, "new_key", tracked_new_key)
    monkeypatch.setattr(tta_average, "estimate_a", spy(tta_average.estimate_a))
    monkeypatch.setattr(tta_average, "recover", spy(tta_average.recover))
    result = execute(tta_average.TtaAverage(), defense, task, cfg, run_dir=tmp_path)
    assert keys and seen
    assert not any(isinstance(arg, MixupKey) for arg in seen)
    def volumes(t):  # every [D,H,W] volume a tensor holds, as bytes
        return {v.numpy().tobytes() for v in t.float().reshape(-1, *t.shape[-3:])}

    references = set().union(*(volumes(key.ref_image) for key in keys))
    given = set().union(*(volumes(arg) for arg in seen if isinstance(arg, torch.Tensor) and arg.ndim >= 3))
    assert given and not given & references  # nothing the attacker works on is a victim's reference
    assert {row["k"] for row in result.table} == {1, 2, 5, 10, 30} & set(range(1, len(task.scans("reference")) + 1)) | {
        cfg.mixup.tta}
    recovered = {row["k"]: row for row in result.table}
    assert recovered[10]["oracle_a_msssim"] > recovered[10]["mixture_msssim"]  # averaging does recover
    assert result.metrics["template_msssim"] == pytest.approx(float(ms_ssim3d(
        PublicPool(task).statistics()[0].expand(len(task.scans("test")), -1, -1, -1)[:, None],
        torch.stack([task.load(s)[0] for s in task.scans("test")]), data_range=1.0).mean()), abs=1e-5)


def test_new_attacks_run_end_to_end_with_the_a_curve_and_can_be_added_to_a_finished_run(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from privbench import leaderboard
    from privbench.cli import app

    args = ["run", "--preset", "test", "--defense", "mixup", "--attack", "linkage", "--attack", "tta-average",
            "--set", "mixup.curve=true", "--out", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (card_path,) = tmp_path.glob("mni-tissue/mixup/*/card.json")
    card = json.loads(card_path.read_text())
    assert [e["attack"] for e in card["attacks"]] == ["linkage", "tta-average"]
    assert [row["a"] for row in card["a_curve"]] == [0.3, 0.7]
    curve = pd.read_csv(card_path.parent / "a_curve.csv")
    assert {"dice_learned+tta", "linkage_top1", "tta-average_linkage_top1"} <= set(curve.columns)
    assert (card_path.parent / "a_curve.png").is_file() and (card_path.parent / "a_curve" / "a=0.3").is_dir()
    board = leaderboard.collect(tmp_path).table
    assert {"linkage_top1", "linkage_map", "tta-average_msssim", "tta-average_a_abs_error"} <= set(board.columns)
    # a finished run gains an attack without training again; its other entries stay
    stamp = (card_path.parent / "checkpoint.pt").stat().st_size
    added = CliRunner().invoke(app, ["attack", str(card_path.parent), "--attack", "reid", "-q"])
    assert added.exit_code == 0, added.output
    card = json.loads(card_path.read_text())
    assert [e["attack"] for e in card["attacks"]] == ["linkage", "tta-average", "reid"]
    assert {"added", "code", "device"} <= set(card["attacks"][-1]["added_later"])
    assert (card_path.parent / "checkpoint.pt").stat().st_size == stamp
    missing = CliRunner().invoke(app, ["attack", str(tmp_path / "nowhere"), "--attack", "reid"])
    assert missing.exit_code == 2 and "unreadable card" in missing.stderr


def test_linkage_applies_to_every_defense(trained_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from privbench.cli import app

    for defense in ("none", "privacy-net", "deformation"):  # the session's runs with every attack
        run = trained_run(defense)
        (entry,) = [e for e in run.card.attacks if e["attack"] == "linkage"]
        assert entry["status"] == "done" and entry["table"][0]["guess"] == "residual correlation on the requests"
        assert all((run.run_dir / f).exists() for f in entry["files"].values())
    copy = tmp_path / "none"
    shutil.copytree(trained_run("none").run_dir, copy)
    result = CliRunner().invoke(app, ["attack", str(copy), "--attack", "linkage", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "attack linkage" in result.output and "TPR@1%" in result.output


def test_the_curve_fixes_a_for_every_request_and_restores_the_range_after(cohort, tmp_path):
    from types import SimpleNamespace

    from privbench.defenses.mixup import curve
    from privbench.mixing import one_hot

    cfg, task = cohort
    cfg = config.resolve("test", {"mixup.curve_a": (0.2, 0.6), "mixup.curve_scans": 1})

    class PerfectClient:  # returns the truth, and records the weight of every key it draws
        eval_range, weights = (0.3, 0.7), []

        def new_key(self, generator=None, k=1):
            self.weights.append(self.eval_range)
            return SimpleNamespace(a=self.eval_range[0], k=k)

        def encode(self, image, key):
            return image.expand(key.k, -1, -1, -1, -1)

        def server(self, proxy):
            return proxy

        def decode(self, mixed, key, unmix):
            label = task.load(self.scan)[1]
            return one_hot(label[None].expand(key.k, -1, -1, -1), task.num_classes)

    client = PerfectClient()
    client.scan = task.scans("test")[0]  # the one scan the curve scores: decode returns its truth
    result = curve.utility_privacy_curve(client, task, cfg, [], run_dir=tmp_path)
    assert client.weights == [(0.2, 0.2), (0.6, 0.6)] and client.eval_range == (0.3, 0.7)
    assert [row["a"] for row in result.sections["a_curve"]] == [0.2, 0.6]
    assert all(row[f"dice_{v}"] == 1.0 for row in result.sections["a_curve"] for v in ("naive", "learned+tta"))
