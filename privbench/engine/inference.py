"""Full-volume inference: a patch network's outputs over whole scans.

:func:`sliding_window_predict` uses MONAI's sliding-window inference, under bfloat16 autocast
where :mod:`privbench.precision` allows it, and refuses a non-finite output.
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.inferers import sliding_window_inference

from privbench import finite, precision
from privbench.config import EvalConfig
from privbench.engine.device import autocast


@torch.no_grad()
def sliding_window_predict(net: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                           patch_size: int, cfg: EvalConfig, device: torch.device,
                           amp: bool = True, softmax: bool = True) -> torch.Tensor:
    """Softmax probabilities ``[B,C,D,H,W]`` of ``net`` over whole volumes ``[B,Cin,D,H,W]``
    (with ``softmax=False``, the blended outputs themselves, e.g. of an image-to-image net).

    The B volumes share every window: they are folded into channels for MONAI's sliding
    window, so each network call holds the same window of all B volumes (reference TTA sends
    its K mixtures through the server this way, one batched pass per window).
    """
    b, cin = volume.shape[:2]

    def all_volumes(windows: torch.Tensor) -> torch.Tensor:  # [n, B*Cin, p,p,p] -> [n, B*C, p,p,p]
        n = windows.shape[0]
        out = net(windows.reshape(n * b, cin, *windows.shape[2:]))
        return out.reshape(n, -1, *out.shape[2:])

    folded = volume.reshape(1, b * cin, *volume.shape[2:]).to(device)
    windows_per_call = max(1, cfg.sw_batch_size // b)
    with autocast(device, amp):
        logits = sliding_window_inference(folded, (patch_size,) * 3, windows_per_call, all_volumes,
                                          overlap=cfg.sw_overlap, mode="gaussian")
    outputs = logits.reshape(b, -1, *logits.shape[2:]).float()
    finite.require_tensor(outputs, f"a network's output over whole volumes "
                                   f"(precision {precision.choose(device, amp).dtype})")
    return torch.softmax(outputs, dim=1) if softmax else outputs
