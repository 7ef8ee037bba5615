"""Built-in tasks; importing this package registers them."""

from privbench.tasks import brats, mni, mni_tumor, ppmi  # noqa: F401  (registers the built-in tasks)
from privbench.tasks.base import ROLES, Scan, Task

__all__ = ["ROLES", "Scan", "Task"]
