"""privbench: utility and privacy of privacy-preserving 3D medical image segmentation."""

from privbench.registry import (
    create_attack,
    create_defense,
    create_task,
    list_attacks,
    list_defenses,
    list_tasks,
    register_attack,
    register_defense,
    register_task,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_attack", "create_defense", "create_task",
    "list_attacks", "list_defenses", "list_tasks",
    "register_attack", "register_defense", "register_task",
]
