"""No NaN or infinite number is ever reported as a result.

:func:`require` walks a result (a card, an attack's metrics and table) and raises
:class:`~privbench.errors.NonFiniteError` naming the first field that is NaN or infinite;
:func:`require_tensor` does the same for a network's output. Where NaN honestly means "not
scored" (the Dice of a class absent from every scan), :func:`none_if_nan` turns it into None
before the value reaches a card, so the card says so instead of printing a number.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from privbench.errors import NonFiniteError


def first_non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The path (``utility[0].dice.CSF``) and value of the first NaN or infinite number in
    nested dicts, lists and tuples, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "value", value)
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = first_non_finite(item, where)
        if found:
            return found
    return None


def require(value: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``value`` holds a NaN or infinite number."""
    found = first_non_finite(value)
    if found:
        raise NonFiniteError(f"{what}: {found[0]} is {found[1]}; no result was written")


def require_tensor(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """``tensor`` itself, or :class:`NonFiniteError` if any of its values is NaN or infinite."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{what}: {bad} of {tensor.numel()} values are NaN or infinite")
    return tensor


def none_if_nan(value: float) -> float | None:
    """A float, or None where it is NaN ("not scored")."""
    return None if isinstance(value, float) and math.isnan(value) else value
