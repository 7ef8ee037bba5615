"""Training and inference machinery shared by every defense and attack.

- :mod:`privbench.engine.device`: the device, the seeds, bfloat16 autocast.
- :mod:`privbench.engine.sampling`: random patch batches (:class:`PatchSampler`).
- :mod:`privbench.engine.training`: the training loop (:func:`train`), learning rates, checkpoints.
- :mod:`privbench.engine.inference`: whole-volume prediction (:func:`sliding_window_predict`).

The names below are re-exported for ``engine.X`` callers. Code inside a submodule looks up its
own globals, so a test that replaces one of its functions patches that submodule, not this package.
"""

from privbench.engine.device import autocast, fast_cuda_math, resolve_device, seed_everything
from privbench.engine.inference import sliding_window_predict
from privbench.engine.sampling import (Batch, ForegroundPicker, PatchSampler, batches, crop_patch, pinned,
                                       random_start, share)
from privbench.engine.training import (CHECKPOINT, Sampler, Step, TrainReport, checkpoint_iteration,
                                       learning_rate, load_checkpoint, non_finite_parts, read_checkpoint,
                                       save_checkpoint, seconds_file, set_learning_rate, train)

__all__ = [
    "CHECKPOINT", "Batch", "ForegroundPicker", "PatchSampler", "Sampler", "Step", "TrainReport",
    "autocast", "batches", "fast_cuda_math", "checkpoint_iteration", "crop_patch", "learning_rate", "load_checkpoint",
    "non_finite_parts", "pinned", "random_start", "read_checkpoint", "resolve_device", "save_checkpoint", "seconds_file",
    "seed_everything", "set_learning_rate", "share", "sliding_window_predict", "train",
]
