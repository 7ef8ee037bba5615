"""Built-in tasks: the registry imports every module of this package, which registers them."""

from privbench.tasks.base import ROLES, Scan, Task

__all__ = ["ROLES", "Scan", "Task"]
