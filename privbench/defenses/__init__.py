"""Built-in defenses; importing this package registers them."""

from privbench.defenses import mixup, none  # noqa: F401  (importing registers them)
from privbench.defenses.base import Defense

__all__ = ["Defense"]
