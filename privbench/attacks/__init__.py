"""Built-in attacks: the registry imports every module of this package, which registers them."""

from privbench.attacks.base import Attack

__all__ = ["Attack"]
