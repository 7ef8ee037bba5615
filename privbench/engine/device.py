"""Where and how precisely networks run: the device, the seeds, and bfloat16 autocast.

Autocast delegates to :mod:`privbench.precision`, which decides whether bfloat16 may be used
(CUDA, or a CPU whose native bfloat16 passed its self-test).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from privbench import precision
from privbench.errors import PrivbenchError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrivbenchError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` asks torch for deterministic kernels
    (runs on CPU are then repeatable bit for bit; on CUDA it would cost speed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def fast_cuda_math() -> None:
    """TensorFloat-32 for float32 matrix products and convolutions on CUDA (Ampere and later),
    as cuDNN already does for convolutions by default; nothing on CPU."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where :func:`privbench.precision.choose` allows it (CUDA, or a CPU whose
    native bfloat16 passed its self-test) and ``enabled`` (``train.amp``); otherwise a no-op."""
    return precision.autocast(precision.choose(device, enabled), device)
