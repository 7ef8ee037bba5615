import pytest
import torch

from privbench import config
from privbench.errors import PrivbenchError
from privbench.identity import PairSampler, adversarial_pairs, pair_accuracy, pair_loss
from privbench.nets import SiameseDiscriminator
from privbench.registry import create_task

from helpers import CoordinateTask


def test_pairs_are_balanced_co_located_and_labelled_by_subject():
    task = CoordinateTask(("s0", "s0", "s1", "s1", "s1", "s2"))
    subjects = {i: scan.subject for i, scan in enumerate(task.scans("train"))}
    batch = PairSampler(task, 32, 10, seed=4).batch(0)
    assert batch.first.shape == batch.second.shape == (10, 1, 32, 32, 32)
    assert batch.same.tolist() == [1.0, 0.0] * 5
    for k in range(10):
        i, j = int(batch.first[k, 0, 0, 0, 0] // 1e6), int(batch.second[k, 0, 0, 0, 0] // 1e6)
        assert i != j  # never a scan paired with itself
        assert (subjects[i] == subjects[j]) == bool(batch.same[k])
        offset = batch.second[k] - batch.first[k]  # same position: only the scan code differs
        assert torch.all(offset == 1e6 * (j - i))
    again = PairSampler(task, 32, 10, seed=4).batch(0)
    assert torch.equal(again.first, batch.first) and torch.equal(again.second, batch.second)


def test_a_task_without_repeated_scans_is_a_clear_error():
    with pytest.raises(PrivbenchError, match="at least two train scans each"):
        PairSampler(CoordinateTask(("s0", "s1", "s2")), 32, 4, seed=0)


def test_discriminator_is_symmetric_and_trainable():
    torch.manual_seed(0)
    disc = SiameseDiscriminator(features=(4, 8))
    a, b = torch.rand(3, 1, 16, 16, 16), torch.rand(3, 1, 16, 16, 16)
    assert torch.allclose(disc.embed(a).norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(disc(a, b), disc(b, a), atol=1e-5) and disc(a, b).shape == (3,)
    sampler = PairSampler(CoordinateTask(("s0", "s0", "s1", "s1")), 16, 4, seed=1)
    batch = sampler.batch(0)
    loss = pair_loss(disc, batch.first, batch.second, batch.same)
    loss.backward()
    assert loss.item() > 0 and disc.calibration.grad is not None
    assert 0 <= pair_accuracy(disc, sampler, batches=2) <= 1


def test_discriminator_learns_to_recognise_subjects_it_never_saw(cache_dir):
    """Trained on raw pairs of 8 training subjects of the embedded cohort (4 mm), it tells
    same- from different-subject pairs of the 4 public-pool subjects apart (measured: 0.92 after
    100-150 iterations; an untrained one calls every pair "same", 0.5)."""
    cfg = config.resolve("test", {"task.n_subjects": 16, "task.test_fraction": 0.25,
                                  "task.public_fraction": 0.25, "task.max_test_scans": 0})
    task = create_task(cfg.task.name, cfg=cfg)
    assert not set(task.subjects("train")) & set(task.subjects("public"))
    train = PairSampler(task, 32, 8, seed=0)
    unseen = PairSampler(task, 32, 8, seed=1, role="public")
    torch.manual_seed(0)
    disc = SiameseDiscriminator(features=cfg.adversary.features)
    assert pair_accuracy(disc, unseen, batches=8) == pytest.approx(0.5, abs=0.1)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for i in range(120):
        disc.train()
        batch = train.batch(i)
        loss = pair_loss(disc, batch.first, batch.second, batch.same)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pair_accuracy(disc, unseen, batches=8) >= 0.8


@pytest.mark.parametrize("cross, expected", [
    (False, [("E(x0)", "E(r0)", 1), ("E(x1)", "E(r1)", 0)]),
    (True, [("E(x0)", "E(r0)", 1), ("E(x1)", "E(r1)", 0),  # the encoded pairs, their own labels
            ("x0", "E(x0)", 1), ("x1", "E(x1)", 1),  # a scan and its own encoding: one subject
            ("r0", "E(r0)", 1), ("r1", "E(r1)", 1),
            ("x0", "E(r0)", 1), ("x1", "E(r1)", 0),  # across: the pair's label
            ("r0", "E(x0)", 1), ("r1", "E(x1)", 0)]),
])
def test_the_adversarial_pairs_are_the_2019_privacy_net_codes(cross, expected):
    """Pairs (x_i, r_i) with labels [1, 0]: each tensor entry is tagged by a number, so the
    pairs can be read back by name."""
    names = ["x0", "x1", "r0", "r1", "E(x0)", "E(x1)", "E(r0)", "E(r1)"]
    tagged = torch.arange(8.0).reshape(8, 1, 1, 1, 1)
    first, second, same = adversarial_pairs(tagged[:4], tagged[4:], torch.tensor([1.0, 0.0]), cross)
    got = [(names[int(a)], names[int(b)], int(s)) for a, b, s in zip(first.flatten(), second.flatten(), same)]
    assert sorted(got) == sorted(expected)
