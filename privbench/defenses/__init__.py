"""Built-in defenses; importing this package registers them."""

from privbench.defenses import none  # noqa: F401  (registers the no-proxy baseline)
from privbench.defenses.base import Defense

__all__ = ["Defense"]
