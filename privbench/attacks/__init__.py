"""Built-in attacks; importing this package registers them."""

from privbench.attacks import bss, linkage, reid, tta_average  # noqa: F401  (importing registers them)
from privbench.attacks.base import Attack

__all__ = ["Attack"]
