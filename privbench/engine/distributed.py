"""Data-parallel training over several processes (``torchrun --nproc_per_node=N -m privbench
run ...``): NCCL between GPUs, gloo on CPU.

Every rank builds the same networks from the same seed (and takes rank 0's weights to be sure),
makes the same batch ``i`` and trains on its own contiguous share of it
(:func:`privbench.engine.share`), so the ranks together see exactly the single-process batch.
Before every optimizer step the gradients of that optimizer's parameters are averaged over the
ranks — what DistributedDataParallel does, done at the optimizer so that every defense's
networks and training steps (several networks, several optimizers, several forward passes per
step) work unchanged, at the cost of DDP's overlap of communication with the backward pass.
Losses are averaged too, so every rank logs and stops on the same numbers. Rank 0 alone writes
checkpoints, the training curve, the evaluation and the card.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from privbench.errors import PrivbenchError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def speaks() -> bool:
    """Whether this process is the one that tells the user: rank 0 under torchrun (which sets
    ``RANK`` in every process, before or after they join), or the only process."""
    return rank() == 0 if active() else os.environ.get("RANK", "0") == "0"


def world() -> int:
    return dist.get_world_size() if active() else 1


def start(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` >
    1), if not joined yet, and return this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if active() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def describe() -> dict[str, Any] | None:
    """The card's record of the process group (None for one process)."""
    return {"world_size": world(), "backend": dist.get_backend()} if active() else None


def require_divisible(batch_size: int) -> None:
    if batch_size % world():
        raise PrivbenchError(f"train.batch_size {batch_size} does not divide among {world()} processes; "
                             f"use a multiple of {world()}")


def share_of(batch: Any) -> Any:
    """This rank's share of a batch (the batch itself for one process)."""
    from privbench.engine.sampling import share

    return share(batch, rank(), world()) if world() > 1 else batch


_AVERAGING = "_privbench_averages_gradients"  # marks an optimizer whose hook is in place


def synchronise(state: dict[str, Any]) -> None:
    """Give every rank rank 0's weights, and make every optimizer in ``state`` average its
    gradients over the ranks before it steps. An optimizer gets its hook once, however often
    it is trained (a defense's phases, an attack refitted), so no step is averaged twice."""
    for obj in state.values():
        if isinstance(obj, torch.nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                dist.broadcast(tensor.data, src=0)
        elif isinstance(obj, torch.optim.Optimizer) and not getattr(obj, _AVERAGING, False):
            obj.register_step_pre_hook(_average_gradients)
            setattr(obj, _AVERAGING, True)


def _average_gradients(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(part.view_as(grad))


def average(losses: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each loss averaged over the ranks (unchanged for one process)."""
    if world() == 1 or not losses:
        return losses
    values = torch.tensor(list(losses.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(losses, (values / world()).tolist()))


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder it made)."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """Leave the process group (after the last collective call)."""
    if active():
        dist.destroy_process_group()
