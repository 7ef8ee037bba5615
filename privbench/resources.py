"""Whether a run's training can fit in the device's memory, decided before anything is allocated.

:func:`training_bytes` is a **lower bound** on what one training step of the segmentation
U-Net++ holds: the batch itself, and the outputs of the convolutions at full patch resolution
that backpropagation keeps (two per block, for the five level-0 nodes of MONAI's
BasicUNetPlusPlus). The real need is several times larger (deeper levels, norms, activations,
the defense's other networks), so a run refused here could never have run; one accepted may
still be too large, and then fails in the framework's own allocator.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from privbench.config import RunConfig
from privbench.errors import PrivbenchError

FLOAT_BYTES = 4


def training_bytes(cfg: RunConfig) -> int:
    """A lower bound on the memory (bytes) of one training step of ``cfg``'s segmentation net."""
    voxels = cfg.train.batch_size * cfg.train.patch_size ** 3
    f = cfg.train.features
    batch = voxels * (FLOAT_BYTES + 8)  # float32 image and int64 label
    level0 = voxels * (2 * f[0] + 3 * 2 * f[0] + 2 * f[5]) * FLOAT_BYTES  # X_0,0 .. X_0,4
    return batch + level0


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: the GPU's free memory, or the host's available memory
    (``MemAvailable``); None where it cannot be told."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(cfg: RunConfig, device: torch.device) -> None:
    """Refuse, with the settings to change, a training step that cannot fit on ``device``."""
    need, have = training_bytes(cfg), available_bytes(device)
    if have is not None and need > have:
        raise PrivbenchError(
            f"train.batch_size={cfg.train.batch_size} with train.patch_size={cfg.train.patch_size} needs "
            f"at least {_gib(need)} for one training step, but {device.type} has {_gib(have)} free; "
            f"lower train.batch_size, train.patch_size or train.features")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**40 else f"{n / 2**40:.3g} TiB"
