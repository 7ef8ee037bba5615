"""Which floating-point precision the networks run in, and why.

CUDA runs under bfloat16 autocast when ``train.amp`` is on. A CPU gets bfloat16 only when it
has native bfloat16 units (AMX or AVX512-BF16) **and** passes a self-test on this machine:
bfloat16 kernels differ between CPUs, and on some (an AMD EPYC with AVX512-BF16 under torch
2.13) a 3D convolution's backward pass is wrong and not even repeatable, so training turns to
NaN. The self-test runs the layers the networks use (3D convolution, instance norm, leaky ReLU,
transposed convolution) at the small spatial sizes U-Net++ reaches at its bottom, forward and
backward, once in float32 and several times in bfloat16, and accepts bfloat16 only when every
bfloat16 pass is finite, equal bit for bit to the first one (runs stay deterministic) and close
to float32. It runs once per process and thread count; anything else falls back to float32,
and :class:`Precision` carries the reason into the log and the card.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("privbench")

REPEATS = 6  # bfloat16 passes compared with each other
TOLERANCE = 0.1  # largest relative L2 error of an output or gradient against float32
SIZES = (2, 4, 8)  # spatial sizes probed (U-Net++ reaches 2^3 at the bottom of 32^3 patches)


@dataclass(frozen=True)
class Precision:
    """The dtype the networks run in (``bfloat16`` under autocast, or ``float32``) and why."""

    dtype: str
    reason: str

    @property
    def autocast(self) -> bool:
        return self.dtype == "bfloat16"

    def card(self) -> dict[str, str]:
        return {"dtype": self.dtype, "reason": self.reason}


def choose(device: torch.device, requested: bool = True) -> Precision:
    """The precision for ``device`` when ``train.amp`` is ``requested`` (see the module's notes)."""
    if not requested:
        return Precision("float32", "train.amp=false")
    if device.type == "cuda":
        return Precision("bfloat16", "bfloat16 autocast on CUDA (train.amp=true)")
    if device.type != "cpu":
        return Precision("float32", f"no bfloat16 autocast on {device.type}")
    if not cpu_has_native_bfloat16():
        return Precision("float32", "this CPU has no native bfloat16 units (AMX or AVX512-BF16), "
                                    "where emulated bfloat16 would be slower than float32")
    return _cpu_self_test(torch.get_num_threads())


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``precision`` says so; otherwise a no-op."""
    if precision.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether the CPU reports AMX tiles or AVX512-BF16 (and oneDNN is there to use them)."""
    native = (getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
              or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return bool(native) and torch.backends.mkldnn.is_available()


@functools.lru_cache(maxsize=None)
def _cpu_self_test(threads: int) -> Precision:
    problem = bfloat16_problem(torch.device("cpu"))
    if problem:
        log.warning("precision: float32, because bfloat16 failed its self-test on this CPU (%s)", problem)
        return Precision("float32", f"bfloat16 failed the self-test on this CPU ({problem})")
    return Precision("bfloat16", f"native bfloat16 on this CPU passed the self-test ({threads} threads)")


def bfloat16_problem(device: torch.device) -> str | None:
    """What is wrong with bfloat16 autocast on ``device`` (None if nothing): non-finite values,
    passes that disagree with each other, or an error against float32 above :data:`TOLERANCE`."""
    for size in SIZES:
        reference = _probe(device, size, bfloat16=False)
        first = None
        for repeat in range(REPEATS):
            values = _probe(device, size, bfloat16=True)
            if not all(torch.isfinite(v).all() for v in values):
                return f"non-finite values at {size}^3"
            if first is None:
                first = values
            elif not all(torch.equal(a, b) for a, b in zip(first, values)):
                return f"pass {repeat + 1} differs from pass 1 at {size}^3 (not deterministic)"
        for name, ours, exact in zip(("output", "input gradient", "weight gradient"), first, reference):
            error = float((ours.double() - exact.double()).norm() / exact.double().norm().clamp(min=1e-12))
            if error > TOLERANCE:
                return f"{name} off float32 by {error:.2g} (relative) at {size}^3"
    return None


def probe_layers(channels: int = 16) -> torch.nn.Module:
    """The layer types of the networks, in one small block (seeded by the caller)."""
    return torch.nn.Sequential(
        torch.nn.Conv3d(channels, 2 * channels, 3, padding=1),
        torch.nn.InstanceNorm3d(2 * channels, affine=True),
        torch.nn.LeakyReLU(0.1),
        torch.nn.ConvTranspose3d(2 * channels, channels, 2, stride=2),
    )


def _probe(device: torch.device, size: int, *, bfloat16: bool) -> list[torch.Tensor]:
    """Output, input gradient and first weight gradient of :func:`probe_layers` on a fixed input."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):  # the run's streams stay untouched
        torch.manual_seed(1234)
        block = probe_layers().to(device)
        x = torch.randn(2, 16, size, size, size, device=device, requires_grad=True)
        target = torch.randn(2, 16, 2 * size, 2 * size, 2 * size, device=device)
    with torch.inference_mode(False), torch.enable_grad():  # the first choice may come during inference
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            out = block(x)
        (out.float() * target).sum().backward()
    return [out.detach().float(), x.grad.detach().float(), block[0].weight.grad.detach().float()]
