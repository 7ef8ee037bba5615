"""``privbench bench``: how fast each defense trains and infers on this machine, as nnU-Net's
benchmark trainers report it (``benchmark_result.json``).

For each defense whose networks train (and the bss attacker's score model): iterations per
second of a training step fed by the real batch stream (``train.workers``), of the same step on
one batch already on the device (no data loading), the main thread's milliseconds to make one
batch, whether data loading starves the step, the seconds to segment one test volume through
the protocol, and the peak memory; beside the environment (device, torch, CUDA and cuDNN,
precision, threads). Each configuration differing from a plain float32 eager loop (no
autocast, no channels-last, no compile) is also measured as that loop, and its speed-up over it
reported: ratios measured in one process, so they hold across machines better than rates.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import time
from typing import Any, Callable

import torch

from privbench import engine, precision
from privbench.config import RunConfig
from privbench.defenses.base import TrainedDefense
from privbench.errors import PrivbenchError
from privbench.registry import create_defense, create_task, list_defenses

RESULT = "benchmark_result.json"
STARVED = 0.9  # data loading starves the step when it keeps the rate below this share of the step's own


def plain(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a plain float32 eager loop: no autocast, no channels-last, no compile."""
    base = copy.deepcopy(cfg)
    base.train.amp, base.train.channels_last, base.train.compile = False, False, False
    return base


def bench(cfg: RunConfig, defenses: list[str] | None = None, *, steps: int = 10, warmup: int = 2,
          score_model: bool = True) -> dict[str, Any]:
    """Measure every trained defense in ``defenses`` (default: all registered) and the bss score
    model under ``cfg``, and under :func:`plain` where that differs; the JSON-able result."""
    if steps < 1 or warmup < 0:
        raise PrivbenchError(f"bench needs --steps >= 1 and --warmup >= 0 (got {steps} and {warmup})")
    device = engine.resolve_device(cfg.device)
    engine.fast_cuda_math()
    task = create_task(cfg.task.name, cfg=cfg)
    variants = {"configured": cfg}
    if _differs(cfg, plain(cfg)):
        variants["fp32 eager"] = plain(cfg)
    rows = []
    for name in defenses or list_defenses():
        for variant, run_cfg in variants.items():
            measured = _defense(name, task, run_cfg, device, steps, warmup)
            if measured is not None:
                rows.append({"component": name, "variant": variant, **measured})
    if score_model:
        for variant, run_cfg in variants.items():
            rows.append({"component": "bss-score", "variant": variant,
                         **_score_model(task, run_cfg, device, steps, warmup)})
    for row in rows:
        base = next((r for r in rows if r["component"] == row["component"] and r["variant"] == "fp32 eager"), row)
        row["speedup_over_fp32_eager"] = row["step_it_per_s"] / base["step_it_per_s"]
    return {"environment": environment(device, cfg), "settings": {
        "preset": cfg.preset, "task": cfg.task.name, "patch_size": cfg.train.patch_size,
        "batch_size": cfg.train.batch_size, "features": list(cfg.train.features), "steps": steps, "warmup": warmup,
        "workers": engine.training.loader_workers(cfg.train, device)}, "results": rows}


def _differs(a: RunConfig, b: RunConfig) -> bool:
    return (a.train.amp and precision.choose(engine.resolve_device(a.device), True).autocast) \
        or a.train.channels_last != b.train.channels_last or a.train.compile != b.train.compile


def _defense(name: str, task: Any, cfg: RunConfig, device: torch.device, steps: int,
             warmup: int) -> dict[str, Any] | None:
    defense = create_defense(name)
    if not isinstance(defense, TrainedDefense):
        return None  # nothing trained
    torch.manual_seed(cfg.seed)
    _reset_peak(device)
    step = defense.setup(task, cfg, device)
    measured = _training(step, defense.sampler(task, cfg), cfg, device, steps, warmup)
    image = task.load(task.scans("test")[0])[0][None]
    defense.segment(image)  # warm-up (and compilation, where compiled)
    began = time.perf_counter()
    defense.segment(image)
    _sync(device)
    return {**measured, "infer_seconds_per_volume": time.perf_counter() - began, "peak_memory_mib": _peak(device)}


def _score_model(task: Any, cfg: RunConfig, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    from privbench.attacks.base import PublicPool
    from privbench.attacks.bss import ScoreModel
    from privbench.defenses.base import accelerate

    torch.manual_seed(cfg.seed)
    _reset_peak(device)
    model = ScoreModel(cfg.attack.bss, device, cfg.train.amp)
    sampler, step, state = model.prepare(PublicPool(task), patch_size=cfg.train.patch_size, seed=cfg.seed)
    accelerate({"net": model.net}, cfg.train.channels_last, cfg.train.compile)
    train_cfg = copy.deepcopy(cfg)
    train_cfg.train.batch_size = cfg.attack.bss.batch_size
    return {**_training(step, sampler, train_cfg, device, steps, warmup), "infer_seconds_per_volume": None,
            "peak_memory_mib": _peak(device)}


def _training(step: Callable, sampler: Any, cfg: RunConfig, device: torch.device, steps: int,
              warmup: int) -> dict[str, Any]:
    """Rates of ``step`` fed by the batch stream, and on one resident batch; batch-making time."""
    workers = engine.training.loader_workers(cfg.train, device)
    stream = engine.batches(sampler, 0, warmup + steps, workers, pin_memory=workers > 0 and device.type == "cuda")
    for iteration, batch in enumerate(stream):  # the clock runs from the previous step's end: it includes waiting
        if iteration == warmup:
            mark = time.perf_counter()
        step(batch.to(device), iteration)
    _sync(device)
    fed_seconds = time.perf_counter() - mark
    resident = sampler.batch(0).to(device)
    began = time.perf_counter()
    for iteration in range(steps):
        step(resident, iteration)
    _sync(device)
    resident_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for iteration in range(steps):
        sampler.batch(iteration)
    batch_ms = 1000 * (time.perf_counter() - began) / steps
    with_data, without = steps / fed_seconds, steps / resident_seconds
    return {"step_it_per_s": without, "step_with_data_it_per_s": with_data, "batch_ms_main_thread": batch_ms,
            "data_loading_starves": bool(with_data < STARVED * without), "workers": workers}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    """Peak MiB: CUDA memory allocated by torch since the reset, or on CPU the process's peak
    resident size so far (which only grows: a ceiling for every component measured after it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: torch.device, cfg: RunConfig) -> dict[str, Any]:
    """Device, library versions, precision and threads the numbers were measured with."""
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
            "device_type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "precision": precision.choose(device, cfg.train.amp).dtype, "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "gpu_count": torch.cuda.device_count() if cuda else 0}
