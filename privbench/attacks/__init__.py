"""Built-in attacks; importing this package registers them."""

from privbench.attacks import reid  # noqa: F401  (importing registers it)
from privbench.attacks.base import Attack

__all__ = ["Attack"]
