"""disc-retrieval: Privacy-Net's retrieval protocol with the defender's discriminator."""

import pytest
import torch

from privbench.attacks.disc_retrieval import angles, map_at
from privbench.defenses.adversarial import DiscriminatorEmbedder
from privbench.nets import SiameseDiscriminator


def test_map_at_5_is_privacy_nets():
    """Query a (its other scan ranked 2nd): P@2 * 1 / 1 = 0.5; query b1 (its two others ranked
    1st and 3rd): (1/1 + 2/3) / 2; a subject with one scan is no query."""
    subjects = ["a", "a", "b", "b", "b", "c"]
    distance = torch.tensor([
        [0, .5, .1, .9, .9, .9],
        [.5, 0, .9, .1, .9, .9],
        [.9, .9, 0, .1, .3, .2],
        [.9, .9, .1, 0, .2, .9],
        [.9, .9, .3, .2, 0, .9],
        [.9, .9, .9, .9, .9, 0]])
    a0, a1 = 1 / 2, 1 / 2  # each finds the other a second
    b0 = (1 / 1 + 2 / 3) / 2  # b1 first, then c, then b2
    b1 = (1 + 1) / 2  # b0 and b2 first
    b2 = (1 + 1) / 2
    assert map_at(distance, subjects) == pytest.approx((a0 + a1 + b0 + b1 + b2) / 5)
    assert map_at(distance, subjects, top=1) == pytest.approx((0 + 0 + 1 / 2 + 1 / 2 + 1 / 2) / 5)


def test_the_embedder_crops_whole_volumes_and_angles_are_zero_on_the_diagonal():
    torch.manual_seed(0)
    disc = SiameseDiscriminator((4, 8))
    embedder = DiscriminatorEmbedder(disc, torch.device("cpu"))
    assert embedder.multiple == 4  # two pooling blocks
    volumes = [torch.rand(1, 1, 18, 21, 17) for _ in range(3)]
    codes = embedder(volumes[0])
    assert codes.shape == (1, 8 * 4 * 5 * 4) and torch.allclose(codes.norm(dim=1), torch.ones(1))
    theta = angles(embedder, volumes + [volumes[0].clone()])
    assert theta.shape == (4, 4) and float(theta.diagonal().abs().max()) < 1e-3
    assert float(theta[0, 3]) < 1e-3 and 0 < float(theta[0, 1]) <= 1
