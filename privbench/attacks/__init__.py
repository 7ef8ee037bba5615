"""Built-in attacks; importing this package registers them."""

from privbench.attacks import bss, reid  # noqa: F401  (importing registers them)
from privbench.attacks.base import Attack

__all__ = ["Attack"]
