"""Built-in defenses: the registry imports every module of this package, which registers them."""

from privbench.defenses.base import Defense

__all__ = ["Defense"]
