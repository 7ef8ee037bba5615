"""Built-in tasks; importing this package registers them."""

from privbench.tasks import mni  # noqa: F401  (registers mni-tissue)
from privbench.tasks.base import ROLES, Scan, Task

__all__ = ["ROLES", "Scan", "Task"]
