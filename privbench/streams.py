"""Named random streams: one seed per purpose, derived from the run's seed and a name.

``seed_of(seed, "attack", "reid")`` is the first 63 bits of SHA-256 over the run seed and the
names, so every purpose (an attack's keys, the a-curve's keys, the order of the requests an
attacker sees) draws from its own stream, independent of the others and of training, and no
purpose can be reached from another by adding an offset. Training and the utility evaluation
use the run's seed itself, as they always have.

The streams in use (``git grep "streams\\."`` lists them):

- ``("client", <attack>)``: the keys of the requests a victim sends while ``<attack>`` watches;
- ``("client", "a-curve")``: the keys of the a-curve's utility requests;
- ``("order", <attack>)``: the shuffle of the requests before the attacker sees them;
- ``("attacker", <attack>)``: the attacker's own randomness (its training, its sampling),
  handed to it as a number from which the run's seed cannot be recovered.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

BITS = 63  # fits torch.Generator.manual_seed and numpy's SeedSequence


def seed_of(seed: int, *names: str) -> int:
    """The seed of the stream ``names`` of a run with ``seed``."""
    text = "/".join([str(int(seed)), *names]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> (64 - BITS)


def generator(seed: int, *names: str) -> torch.Generator:
    """A CPU torch generator on the stream ``names``."""
    return torch.Generator().manual_seed(seed_of(seed, *names))


def rng(seed: int, *names: str) -> np.random.Generator:
    """A numpy generator on the stream ``names``."""
    return np.random.default_rng(seed_of(seed, *names))
