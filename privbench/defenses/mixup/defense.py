"""``mixup``: Mixup-Privacy (Kim, Dolz, Jodoin, Desrosiers; IPMI 2023).

The client mixes its scan with a labelled reference from its private pool,
``x_mix = a*x + (1-a)*x_ref``, and sends only the mixture. The server's U-Net++ ``S`` returns the
mixed segmentation. The client, who alone knows ``(x_ref, y_ref, a)``, unmixes it naively (Eq. 4)
or with the learned unmixing U-Net ``D(y_mix, y_ref, a)``. ``S`` and ``D`` are trained end to end:
Dice + CE of ``S`` against the mixed one-hot labels plus Dice + CE of ``D`` against the target.

Reference TTA (Eq. 5-6): a key may hold K references (one ``a``); the K mixtures go through the
server as one batch, so each sliding window is one network call for all of them, and the K
unmixed predictions are averaged. The study of the paper's Table 1 and the a-curve live beside
this module (``study.py``, ``curve.py``); training, restoring and the server's pass are the
trained-defense base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from privbench import engine
from privbench.config import MAX_WEIGHT, RunConfig, require
from privbench.defenses.base import TrainedDefense
from privbench.defenses.mixup.curve import utility_privacy_curve
from privbench.defenses.mixup.study import evaluate_mixup
from privbench.errors import PrivbenchError
from privbench.evaluation import Evaluation, Study
from privbench.mixing import MIN_WEIGHT, mix, naive_unmix, one_hot
from privbench.nets import SegmentationNet, UnmixingNet
from privbench.registry import register_defense
from privbench.tasks.base import Task

@dataclass
class MixupConfig:
    """Mixup-Privacy (Kim et al., IPMI 2023): mixing weights, loss weights, unmixing net and TTA."""

    a_min: float = 0.0  # training draws a ~ U(a_min, a_max), floored at 1e-3 (the paper: U(0, 1))
    a_max: float = 1.0
    eval_a_min: float = 0.3  # evaluation draws one a per test volume ~ U(eval_a_min, eval_a_max)
    eval_a_max: float = 0.7
    seg_weight: float = 1.0  # weight of S's Dice + CE against the mixed labels
    unmix_weight: float = 1.0  # weight of D's Dice + CE against the target labels
    unmix_features: int = 8  # channels of the unmixing U-Net's first blocks
    tta: int = 4  # K references of the "+TTA" variants (the paper: 10)
    tta_max: int = 4  # the Dice-versus-K curve runs K = 1..tta_max (>= tta, >= 2 for test-retest)
    curve: bool = False  # also measure the utility-privacy curve over fixed a (Dice and the run's attacks)
    curve_a: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the curve's weights
    curve_scans: int = 4  # test scans whose Dice the curve measures at each a

    PRESETS = {"test": {"unmix_features": 4, "tta": 2, "tta_max": 3, "curve_a": (0.3, 0.7), "curve_scans": 1},
               "paper": {"tta": 10, "tta_max": 30, "unmix_features": 16}}

    def validate(self, run: RunConfig) -> None:
        require((0 <= self.a_min <= self.a_max <= 1, "mixup.a_min <= mixup.a_max must lie in [0, 1]"),
                (0 < self.eval_a_min <= self.eval_a_max <= 1, "mixup.eval_a_min <= mixup.eval_a_max must lie in (0, 1]"),
                (0 <= self.seg_weight <= MAX_WEIGHT and 0 <= self.unmix_weight <= MAX_WEIGHT,
                 f"mixup.seg_weight and mixup.unmix_weight must be in [0, {MAX_WEIGHT:g}]"),
                (self.unmix_features >= 1, "mixup.unmix_features must be >= 1"),
                (1 <= self.tta <= self.tta_max and self.tta_max >= 2,
                 "mixup.tta must be >= 1 and <= mixup.tta_max, and mixup.tta_max >= 2 (test-retest)"),
                (len(self.curve_a) >= 1 and all(0 < a <= 1 for a in self.curve_a) and self.curve_scans >= 1,
                 "mixup.curve_a must be weights in (0, 1] and mixup.curve_scans >= 1"))


UNMIXINGS = ("naive", "learned")


@dataclass
class MixupKey:
    """The client's secret for one request: K references (images ``[K,1,D,H,W]``, labels
    ``[K,D,H,W]``), their pool indices, and the mixing weight ``a`` shared by the K mixtures."""

    ref_image: torch.Tensor
    ref_label: torch.Tensor
    indices: list[int]
    a: float

    def __len__(self) -> int:
        return len(self.indices)

    def pick(self, k: int) -> "MixupKey":
        """The single-reference key of the k-th reference."""
        return MixupKey(self.ref_image[k:k + 1], self.ref_label[k:k + 1], [self.indices[k]], self.a)


@register_defense("mixup", description="Mixup-Privacy: mix with a private labelled reference, "
                  "unmix the server's mixed segmentation (naive or learned, with reference TTA)",
                  paper="Kim, Dolz, Jodoin, Desrosiers, IPMI 2023", requires=("reference pool",),
                  config=MixupConfig,
                  published={"reid_f1": 0.284, "reid_map": 0.352, "dice_mean": 0.889})
class MixupPrivacy(TrainedDefense):
    """Server U-Net++ on mixtures and client-side AdaIN unmixing U-Net, trained jointly."""

    name = "mixup"

    def __init__(self, unmix: str = "learned"):
        self.unmix = _checked(unmix)  # what decode() uses unless told otherwise

    def check(self, task: Task, cfg: RunConfig) -> None:
        """The reference pool must hold ``mixup.tta_max`` scans (checked before the run folder exists)."""
        pool = len(task.scans("reference"))
        if pool < cfg.mixup.tta_max:
            raise PrivbenchError(f"mixup.tta_max={cfg.mixup.tta_max} needs as many reference scans; "
                                 f"task {task.name!r} has {pool} (raise task.reference_subjects)")

    def prepare(self, task: Task, cfg: RunConfig) -> None:
        self.attach(task, cfg)

    def attach(self, task: Task, cfg: RunConfig) -> None:
        """Give the client its reference pool (the task's ``reference`` scans, loaded lazily)."""
        self.check(task, cfg)
        self.task, self.pool = task, task.scans("reference")
        self.eval_range = (cfg.mixup.eval_a_min, cfg.mixup.eval_a_max)

    def sampler(self, task: Task, cfg: RunConfig) -> engine.Sampler:
        """Patches of the training scans, each with the co-located patch of a reference."""
        return engine.PatchSampler(task, cfg.train.patch_size, cfg.train.batch_size, cfg.seed,
                                   references=True, foreground=cfg.train.foreground_fraction)

    def build(self, cfg: RunConfig) -> engine.Step:
        """Create S, D and their optimiser; return one end-to-end training step."""
        m, device, num_classes = cfg.mixup, self.device, self.num_classes
        self.net = SegmentationNet(1, num_classes, cfg.train.features).to(device)
        self.unmixer = UnmixingNet(num_classes, m.unmix_features).to(device)
        params = list(self.net.parameters()) + list(self.unmixer.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
        self.state = {"net": self.net, "unmixer": self.unmixer, "optimizer": optimizer}
        # soft targets (the mixed one-hot labels): squared denominators make p = target the
        # optimum of the Dice term (with plain sums it pushes p towards hard labels)
        mixed_loss = DiceCELoss(softmax=True, squared_pred=True, batch=True)
        target_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            self.net.train()
            self.unmixer.train()
            engine.set_learning_rate(optimizer, engine.learning_rate(cfg.train, iteration))
            optimizer.zero_grad(set_to_none=True)
            draw = np.random.default_rng([cfg.seed, iteration, 1]).uniform(m.a_min, m.a_max, len(batch.image))
            a = torch.as_tensor(draw, dtype=torch.float32, device=device).clamp(min=MIN_WEIGHT)
            y_ref = one_hot(batch.ref_label, num_classes)
            y_mix = mix(one_hot(batch.label, num_classes), y_ref, a)
            with engine.autocast(device, self.amp):
                logits = self.net(mix(batch.image, batch.ref_image, a))
                unmixed = self.unmixer(torch.softmax(logits.float(), 1), y_ref, a)
            seg = mixed_loss(logits.float(), y_mix)
            rec = target_loss(unmixed.float(), batch.label[:, None])
            loss = m.seg_weight * seg + m.unmix_weight * rec
            loss.backward()
            optimizer.step()
            return {"loss": loss.item(), "seg": seg.item(), "unmix": rec.item()}

        return step

    def new_key(self, generator: torch.Generator | None = None, k: int = 1) -> MixupKey:
        """``k`` distinct references from the pool and one ``a`` ~ U(eval range)."""
        if k > len(self.pool):
            raise PrivbenchError(f"reference TTA with K={k} needs {k} reference scans; the pool "
                                 f"has {len(self.pool)} (raise task.reference_subjects)")
        indices = torch.randperm(len(self.pool), generator=generator)[:k].tolist()
        lo, hi = self.eval_range
        a = lo + (hi - lo) * float(torch.rand((), generator=generator))
        images, labels = zip(*(self.task.load(self.pool[i]) for i in indices))
        return MixupKey(torch.stack(images), torch.stack(labels), indices, max(a, MIN_WEIGHT))

    def encode(self, image: torch.Tensor, key: MixupKey) -> torch.Tensor:
        """One image ``[1,1,D,H,W]`` -> its K mixtures ``[K,1,D,H,W]``."""
        return mix(image.expand(len(key), *image.shape[1:]), key.ref_image, key.a)

    def decode(self, server_output: torch.Tensor, key: MixupKey, unmix: str | None = None) -> torch.Tensor:
        """Unmixed probabilities ``[K,C,...]``, one per reference of the key."""
        y_ref = one_hot(key.ref_label, self.num_classes)
        if _checked(unmix or self.unmix) == "naive":
            return naive_unmix(server_output, y_ref, key.a)
        return self.learned_unmix(server_output, y_ref, key.a)

    def learned_unmix(self, y_mix: torch.Tensor, y_ref: torch.Tensor, a: float) -> torch.Tensor:
        """``D`` over whole volumes, window by window like training (AdaIN statistics are
        those of a patch)."""
        self.unmixer.eval()
        k, c = y_mix.shape[:2]
        weights = torch.full((k,), a, device=self.device)

        def unmixer(windows: torch.Tensor) -> torch.Tensor:  # [n*K, 2C, p,p,p]
            repeat = windows.shape[0] // k
            return self.unmixer(windows[:, :c], windows[:, c:], weights.repeat(repeat))

        pair = torch.cat([y_mix, y_ref], dim=1)
        return engine.sliding_window_predict(unmixer, pair, self.patch_size, self.eval_cfg,
                                             self.device, self.amp).cpu()

    def segment(self, image: torch.Tensor, *, tta: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """One request with ``tta`` references: K mixtures, one server pass, K unmixings averaged."""
        key = self.new_key(generator, k=tta)
        return self.decode(self.server(self.encode(image, key)), key).mean(0, keepdim=True)

    def evaluate(self, task: Task, cfg: RunConfig, *, run_dir: Path) -> Evaluation:
        """The paper's Table 1 study (:mod:`privbench.defenses.mixup.study`)."""
        return evaluate_mixup(self, task, cfg, run_dir=run_dir)

    def study(self, task: Task, cfg: RunConfig, attacks: list[Any], *, run_dir: Path,
              progress: bool = True, secret: int | None = None) -> Study | None:
        """With ``mixup.curve``: the utility-privacy curve over a (:mod:`privbench.defenses.mixup.curve`)."""
        if not cfg.mixup.curve:
            return None
        return utility_privacy_curve(self, task, cfg, attacks, run_dir=run_dir, progress=progress, secret=secret)


def _checked(unmix: str) -> str:
    if unmix not in UNMIXINGS:
        raise PrivbenchError(f"unknown unmixing {unmix!r} (available: {', '.join(UNMIXINGS)})")
    return unmix
