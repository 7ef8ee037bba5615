import pytest
import torch

from privbench.errors import PrivbenchError
from privbench.identity import PairSampler, pair_accuracy, pair_loss
from privbench.nets import SiameseDiscriminator

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
    disc = SiameseDiscriminator(features=(4, 8), embedding=8)
    a, b = torch.rand(3, 1, 16, 16, 16), torch.rand(3, 1, 16, 16, 16)
    assert torch.allclose(disc.embed(a).norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(disc(a, b), disc(b, a), atol=1e-5) and disc(a, b).shape == (3,)
    sampler = PairSampler(CoordinateTask(("s0", "s0", "s1", "s1")), 16, 4, seed=1)
    loss = pair_loss(disc, sampler.batch(0))
    loss.backward()
    assert loss.item() > 0 and disc.scale.grad is not None
    assert 0 <= pair_accuracy(disc, sampler, batches=2) <= 1
