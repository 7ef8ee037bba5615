"""Built-in defenses; importing this package registers them."""

from privbench.defenses import deformation, mixup, none, privacy_net  # noqa: F401  (importing registers them)
from privbench.defenses.base import Defense

__all__ = ["Defense"]
