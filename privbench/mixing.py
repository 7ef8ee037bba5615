"""Mixup-Privacy's client-side arithmetic (Kim et al., IPMI 2023, Eq. 1-4).

The client mixes its image with a private reference, ``x_mix = a*x + (1-a)*x_ref``, and during
training mixes the one-hot labels the same way. Given the server's mixed prediction, the
client, who knows ``a`` and ``y_ref``, inverts the mixing naively (Eq. 4):
``y = (y_mix - (1-a)*y_ref) / a``, then clips and renormalises it to probabilities.
Shapes: images ``[B,1,D,H,W]``, labels ``[B,D,H,W]`` int64, probabilities ``[B,C,D,H,W]``;
``a`` is a float or a ``[B]`` tensor.
"""

from __future__ import annotations

import torch
from monai.networks.utils import one_hot as monai_one_hot

MIN_WEIGHT = 1e-3  # floor on a: naive unmixing divides by it


def _per_sample(a: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a`` as a ``[B,1,1,1,1]`` tensor broadcastable against ``like``."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def mix(x: torch.Tensor, x_ref: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
    """``a*x + (1-a)*x_ref`` per sample (images or probability maps)."""
    w = _per_sample(a, x)
    return w * x + (1 - w) * x_ref


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label map ``[B,D,H,W]`` -> float one-hot ``[B,C,D,H,W]`` (MONAI's, channel first)."""
    return monai_one_hot(label[:, None], num_classes, dtype=torch.float32)


def naive_unmix(y_mix: torch.Tensor, y_ref: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
    """Eq. 4, ``(y_mix - (1-a)*y_ref) / a``, clipped to [0, 1] and renormalised over classes."""
    w = _per_sample(a, y_mix).clamp(min=MIN_WEIGHT)
    y = ((y_mix - (1 - w) * y_ref) / w).clamp(0, 1)
    total = y.sum(1, keepdim=True)
    uniform = torch.full_like(y, 1.0 / y.shape[1])
    return torch.where(total > 0, y / total.clamp(min=1e-12), uniform)
