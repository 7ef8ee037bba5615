"""Built-in tasks; importing this package registers them."""

from privbench.tasks import mni, mni_tumor  # noqa: F401  (registers mni-tissue, mni-tumor)
from privbench.tasks.base import ROLES, Scan, Task

__all__ = ["ROLES", "Scan", "Task"]
