"""Named random streams: independent of each other and reproducible; a change of their derivation
changes every attack's keys, so it is pinned here."""

import hashlib

import numpy as np
import torch

from privbench import streams


def test_a_stream_is_sha256_of_the_seed_and_its_names():
    expected = int.from_bytes(hashlib.sha256(b"0/client/reid").digest()[:8], "big") >> 1
    assert streams.seed_of(0, "client", "reid") == expected == 3791467468837692800
    assert 0 <= streams.seed_of(2**32 - 1, "order", "bss") < 2**63


def test_streams_differ_by_name_and_by_seed_and_repeat_exactly():
    seeds = {streams.seed_of(s, *names) for s in (0, 1, 7919) for names in
             [("client", "reid"), ("client", "linkage"), ("order", "reid"), ("attacker", "reid"), ("client",)]}
    assert len(seeds) == 15
    assert torch.equal(torch.rand(5, generator=streams.generator(3, "x")),
                       torch.rand(5, generator=streams.generator(3, "x")))
    assert np.array_equal(streams.rng(3, "x").random(5), streams.rng(3, "x").random(5))
    assert not torch.equal(torch.rand(5, generator=streams.generator(3, "x")),
                           torch.rand(5, generator=streams.generator(4, "x")))
