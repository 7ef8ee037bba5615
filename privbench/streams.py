"""Named random streams: one seed per purpose, derived from a root number and a name.

``seed_of(root, "client", "reid")`` is the first 63 bits of SHA-256 over the root and the
names, so every purpose draws from its own stream, independent of the others and of training,
and no purpose can be reached from another by adding an offset. Training and the utility
evaluation use the run's seed itself, as they always have.

Two roots. The run's **seed** is public: it is in the config, the card and the leaderboard, and
small (0-2), so anything derived from it can be redrawn by whoever knows how. What an attacker
must not redraw comes from the run's **client secret** (:func:`client_secret`, 256 bits from the
operating system, drawn afresh by every run and every ``privbench attack``, recorded in the
run's ``truth.json`` only after scoring).

The streams in use (``git grep "streams\\."`` lists them):

- ``(secret, "client", <attack>[, <scenario>])``: the keys of the requests a victim sends while
  ``<attack>`` watches (a scenario such as the a-curve's ``a=0.3`` draws its own);
- ``(secret, "order", <attack>[, <scenario>])``: the shuffle of the requests before the
  attacker sees them;
- ``(seed, "client", "a-curve")``: the keys of the a-curve's utility requests (no attacker sees them);
- ``(seed, "attacker", <attack>)``: the attacker's own randomness (its training, its sampling),
  handed to it as a number from which neither the run's seed nor its secret can be recovered.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import torch

BITS = 63  # fits torch.Generator.manual_seed and numpy's SeedSequence


def seed_of(seed: int, *names: str) -> int:
    """The seed of the stream ``names`` of a run with ``seed``."""
    text = "/".join([str(int(seed)), *names]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> (64 - BITS)


def client_secret() -> int:
    """A fresh client secret: 256 bits from the operating system's entropy, never derived from
    anything in the config."""
    return int.from_bytes(secrets.token_bytes(32), "big")


def generator(seed: int, *names: str) -> torch.Generator:
    """A CPU torch generator on the stream ``names``."""
    return torch.Generator().manual_seed(seed_of(seed, *names))


def rng(seed: int, *names: str) -> np.random.Generator:
    """A numpy generator on the stream ``names``."""
    return np.random.default_rng(seed_of(seed, *names))
