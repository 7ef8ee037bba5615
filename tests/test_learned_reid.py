"""learned-reid: a contrastive embedding trained on the attacker's own proxies of public scans."""

import sys
import types

import pytest
import torch

from privbench import config
from privbench.attacks.base import DefenseDescription, execute
from privbench.attacks.learned_reid import (LearnedReid, LearnedReidConfig, SessionPairs, SliceEmbedder,
                                            VolumeEmbedder, nt_xent, public_proxies)
from privbench.defenses.none import NoProxy
from privbench.errors import PrivbenchError

from helpers import gallery_cohort


def test_the_loss_rewards_embeddings_that_put_sessions_of_one_subject_together():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    together = torch.eye(3)[labels]  # each subject its own direction
    apart = torch.eye(6)  # every item its own direction
    assert nt_xent(together, labels, 0.1) < 1e-3 < nt_xent(apart, labels, 0.1)
    # one positive per item among five others at equal similarity 0: the loss is log(5)
    assert torch.isclose(nt_xent(apart, labels, 1.0), torch.log(torch.tensor(5.0)), atol=1e-5)


def test_positives_are_two_different_scans_of_one_subject_and_batches_are_reproducible():
    subjects = ["a", "a", "b", "b", "b", "c"]  # c has one scan: it can give no positive pair
    clean = torch.arange(6.0).reshape(6, 1, 1, 1, 1).expand(6, 1, 2, 2, 2)
    proxies = torch.stack([clean + 100, clean + 200], 1)  # [N, keys, 1, ...]: two keys per scan
    pairs = SessionPairs(proxies, clean, subjects, per_batch=5, clean_views=0.5, seed=3)
    batch = pairs.batch(7)
    assert batch.image.shape == (4, 1, 2, 2, 2) and batch.label.tolist()[:2] == batch.label.tolist()[2:]
    scan = batch.image[:, 0, 0, 0, 0] % 100  # which public scan each view shows
    first, second = scan[:2].tolist(), scan[2:].tolist()
    assert all(subjects[int(i)] == subjects[int(j)] and i != j for i, j in zip(first, second))
    assert all(v >= 100 for v in batch.image[:2, 0, 0, 0, 0].tolist())  # the first view is always a proxy
    assert torch.equal(batch.image, pairs.batch(7).image) and not torch.equal(batch.image, pairs.batch(8).image)
    with pytest.raises(PrivbenchError, match="two public subjects"):
        SessionPairs(proxies[:3], clean[:3], subjects[:3], per_batch=5, clean_views=0.5, seed=3)


class _Seen:
    def __init__(self, name, mixup=None, white_box=None):
        self.defense = DefenseDescription(name, {"mixup": mixup} if mixup else {})
        self.white_box = white_box


def test_proxies_are_made_as_each_defense_makes_them():
    images = torch.rand(4, 1, 3, 3, 3)
    subjects = ["a", "a", "b", "c"]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(public_proxies(_Seen("none"), images, subjects, 3, g)[:, 0], images)
    mixed = public_proxies(_Seen("mixup", {"eval_a_min": 0.3, "eval_a_max": 0.7}), images, subjects, 3, g)
    assert mixed.shape == (4, 3, 1, 3, 3, 3)
    for i, subject in enumerate(subjects):  # each proxy is a*x + (1-a)*r, r a public scan of another subject
        for proxy in mixed[i]:
            fits = [(j, float(((proxy - images[j]) * (images[i] - images[j])).sum() / ((images[i] - images[j]) ** 2).sum()))
                    for j in range(4) if subjects[j] != subject]
            assert any(0.3 - 1e-4 <= a <= 0.7 + 1e-4 and torch.allclose(proxy, a * images[i] + (1 - a) * images[j], atol=1e-5)
                       for j, a in fits)

    class Box:
        deterministic = True

        def encode(self, volumes, generator):
            return 1 - volumes

    assert torch.allclose(public_proxies(_Seen("privacy-net", white_box=Box()), images, subjects, 3, g)[:, 0], 1 - images)
    with pytest.raises(PrivbenchError, match="cannot make proxies"):
        public_proxies(_Seen("someone-elses"), images, subjects, 3, g)


def test_validation_holds_out_a_third_of_the_public_subjects_with_pairs():
    from privbench.attacks.learned_reid import validation_subjects

    subjects = [s for s in "abcdefg" for _ in range(2)] + ["h"]  # h has one scan: never eligible
    held = validation_subjects(subjects, seed=1)
    assert len(held) == 2 and held <= set("abcdefg") and held == validation_subjects(subjects, seed=1)
    assert validation_subjects(["a", "a", "b", "b", "c", "c"], seed=1) == frozenset()  # too few to spare
    pairs = SessionPairs(torch.zeros(15, 1, 1, 2, 2, 2), torch.zeros(15, 1, 2, 2, 2), subjects, 9, 0.5, 0, held)
    assert len(pairs.groups) == 5


def test_weights_are_granted_only_against_defenses_that_have_them():
    attack = LearnedReid()
    assert "weights" in attack.granted(LearnedReidConfig(), "privacy-net")
    assert "weights" in attack.granted(LearnedReidConfig(), "deformation")
    assert "weights" not in attack.granted(LearnedReidConfig(), "mixup")
    assert "weights" not in attack.granted(LearnedReidConfig(), "none")


def test_the_embedding_is_a_unit_vector_that_keeps_where_features_lie():
    net = VolumeEmbedder((4, 8), 2, torch.zeros(16, 16, 16))
    x = torch.rand(3, 1, 16, 16, 16)
    out = net(x)
    assert out.shape == (3, 2 * 4 * 4 * 4) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(net(2 * x + 1), out, atol=1e-4)  # a session's intensity scale and offset do not matter


def test_a_timm_backbone_runs_over_slices_and_its_absence_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as on a CPU build of torch, where timm cannot import
    with pytest.raises(PrivbenchError, match="needs timm.*backbone=monai"):
        SliceEmbedder("resnet18", 8, 4, torch.zeros(6, 8, 8))
    built = []

    def create_model(name, pretrained, in_chans, num_classes):
        built.append((name, pretrained, in_chans))
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    net = SliceEmbedder("resnet18", 8, 4, torch.zeros(6, 8, 8))
    out = net(torch.rand(2, 1, 6, 8, 8))
    assert built == [("resnet18", False, 1)] and out.shape == (2, 8)  # never pretrained: nothing downloads
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(PrivbenchError, match="backbone must be monai or timm"):
        config.resolve("test", {"attack.learned_reid.backbone": "resnet18"})


def test_unprotected_requests_are_identified_and_linked(cache_dir, tmp_path):
    cfg, task = gallery_cohort(cache_dir, **{"attack.learned_reid.iterations": 10})
    result = execute(LearnedReid(), NoProxy(), task, cfg, run_dir=tmp_path)
    assert result.metrics["linkage_top1"] == 1.0 and result.metrics["top1"] == 1.0
    assert result.metrics["chance_top1"] < 0.1 and result.settings["iterations"] == 10
    rows = [row["guess"] for row in result.table]
    selected = result.settings["selected"]
    assert rows == [f"requests vs the clean gallery ({selected} network, chosen on public validation)",
                    "requests vs requests", "unprotected scans vs each other",
                    "trained network: requests vs the clean gallery",
                    "untrained network: requests vs the clean gallery", "chance"]
    held_out = result.settings["validation_subjects"]  # a third of the 16 public subjects, never trained on
    assert len(held_out) == 5 and result.settings["training_subjects"] == 11
    assert set(result.settings["validation_top1_map"]) == {"trained", "untrained"}
    assert len(list(tmp_path.glob("attackers/learned-reid-*/learned_reid_net.pt"))) == 1 and (tmp_path / "learned-reid_roc.png").exists()
