"""``bss``: blind source separation of Mixup-Privacy's mixtures (Kim et al., IPMI 2023, Sec. 4).

The attacker trains a noise-conditional score model (NCSNv2: a U-Net++ whose output is divided
by sigma, denoising score matching with lambda(sigma) = sigma^2, geometric noise levels from the
largest distance between training patches down to ``sigma_min``, EMA weights) on clean patches
of its public pool, then separates each observed mixture ``m = a*x1 + (1-a)*x2`` into two
sources by annealed Langevin dynamics on the two sources jointly (Jayaram & Thickstun, ICML
2020). Scored by 3D MS-SSIM between the recovered and the true target (the better of the two
source assignments), beside three calibration guesses: the mixture itself, the public pool's
mean (the template) at the patch's place, and an oracle that knows the reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from privbench import engine, figures
from privbench.attacks.base import Attack, AttackResult, public_statistics
from privbench.config import BssConfig, RunConfig, TrainConfig
from privbench.defenses.base import Defense
from privbench.metrics import ms_ssim3d
from privbench.nets import ScoreNet
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, Task

Score = Callable[[torch.Tensor, float], torch.Tensor]  # grad_x log p_sigma(x)
CHECKPOINT = "bss_score.pt"
FIGURE = "bss_examples.png"
SEED_OFFSET = 104729  # the attack's keys and patches are drawn apart from the evaluation's


def noise_levels(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """``n`` geometrically spaced noise levels from ``sigma_max`` down to ``sigma_min``."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n))


def largest_distance(patches: torch.Tensor) -> float:
    """The largest Euclidean distance between two patches: NCSNv2's choice of sigma_1."""
    flat = patches.flatten(1).double()
    return float(torch.cdist(flat, flat).max())


def separate(mixture: torch.Tensor, alpha: float | torch.Tensor, score: Score, sigmas: torch.Tensor,
             steps_per_level: int, step_lr: float, *, generator: torch.Generator | None = None,
             gamma_scale: float = 1.0, final_denoise: bool = True,
             init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample two sources ``(x1, x2)`` of ``mixture = a*x1 + (1-a)*x2`` by annealed Langevin dynamics.

    For each level sigma_i (descending) and ``steps_per_level`` steps, with
    ``eta_i = step_lr * sigma_i^2 / sigma_L^2`` and ``gamma_i = gamma_scale * sigma_i``:
    ``x_j += eta_i * (score(x_j, sigma_i) + c_j * (m - a*x1 - (1-a)*x2) / gamma_i^2) + sqrt(2*eta_i) * z``
    with ``c_1 = a``, ``c_2 = 1 - a``; then, optionally, ``x_j += sigma_L^2 * score(x_j, sigma_L)``.
    Sources start uniform in [0, 1] (as in NCSN) unless ``init`` gives them. ``alpha`` is a float
    or a per-sample ``[B]`` tensor; ``score`` is any callable (both sources share the prior).
    """
    m = mixture
    a = torch.as_tensor(alpha, dtype=m.dtype, device=m.device)
    a = a.reshape(-1, *([1] * (m.ndim - 1))) if a.ndim else a
    if init is None:
        x1, x2 = (torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype) for _ in range(2))
    else:
        x1, x2 = init
    sigma_last = float(sigmas[-1])
    for sigma in map(float, sigmas):
        eta, gamma2 = step_lr * sigma**2 / sigma_last**2, (gamma_scale * sigma) ** 2
        for _ in range(steps_per_level):
            s1, s2 = score(torch.cat([x1, x2]), sigma).chunk(2)
            residual = (m - a * x1 - (1 - a) * x2) / gamma2
            z1, z2 = (torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype) for _ in range(2))
            x1 = x1 + eta * (s1 + a * residual) + math.sqrt(2 * eta) * z1
            x2 = x2 + eta * (s2 + (1 - a) * residual) + math.sqrt(2 * eta) * z2
    if final_denoise:
        s1, s2 = score(torch.cat([x1, x2]), sigma_last).chunk(2)
        x1, x2 = x1 + sigma_last**2 * s1, x2 + sigma_last**2 * s2
    return x1, x2


class ScoreModel:
    """The attacker's NCSNv2 score model, trained by denoising score matching on public patches."""

    def __init__(self, cfg: BssConfig, device: torch.device, amp: bool = True):
        self.cfg, self.device, self.amp = cfg, device, amp
        self.net = ScoreNet(cfg.features).to(device)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
        self.sigmas = torch.empty(0)

    def fit(self, task: Task, run_cfg: RunConfig, *, workdir: Path | None, progress: bool = True,
            role: str = "public") -> engine.TrainReport:
        """Train on ``role`` patches (the attacker's public pool), resuming from ``workdir``."""
        p = run_cfg.train.patch_size
        train_cfg = TrainConfig(iterations=self.cfg.iterations, batch_size=self.cfg.batch_size,
                                patch_size=p, lr=self.cfg.lr, lr_schedule="constant",
                                features=self.cfg.features, checkpoint_every=run_cfg.train.checkpoint_every,
                                amp=self.amp)
        probe = engine.PatchSampler(task, p, 128, run_cfg.seed + SEED_OFFSET, role=role).batch(0)
        self.sigmas = noise_levels(largest_distance(probe.image), self.cfg.sigma_min, self.cfg.num_sigmas)
        sampler = engine.PatchSampler(task, p, self.cfg.batch_size, run_cfg.seed + SEED_OFFSET, role=role)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        state = {"net": self.net, "ema": self.ema, "optimizer": optimizer}
        return engine.train(self._step(optimizer, run_cfg.seed), sampler, train_cfg, state=state,
                            device=self.device, workdir=workdir, progress=progress, name="bss score",
                            checkpoint=CHECKPOINT)

    def _step(self, optimizer: torch.optim.Optimizer, seed: int) -> engine.Step:
        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            self.net.train()
            rng = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
            levels = torch.randint(len(self.sigmas), (len(batch.image),), generator=rng)
            sigma = self.sigmas[levels].to(self.device).reshape(-1, 1, 1, 1, 1)
            z = torch.randn(batch.image.shape, generator=rng).to(self.device)
            optimizer.zero_grad(set_to_none=True)
            with engine.autocast(self.device, self.amp):
                out = self.net(batch.image + sigma * z, sigma)
            loss = 0.5 * ((out.float() * sigma + z) ** 2).mean()  # lambda(sigma) = sigma^2
            loss.backward()
            optimizer.step()
            self.ema.update_parameters(self.net)
            return {"dsm": loss.item()}

        return step

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The EMA model's score of ``x`` at noise level ``sigma``."""
        self.ema.eval()
        with engine.autocast(self.device, self.amp):
            return self.ema(x, sigma).float()


@register_attack("bss", description="Blind source separation of mixtures: NCSN score model + "
                 "annealed Langevin dynamics (MS-SSIM to the target)",
                 paper="Kim et al., IPMI 2023 (Sec. 4); Jayaram & Thickstun, ICML 2020", requires=(PUBLIC_POOL,))
class BlindSourceSeparation(Attack):
    """Recover the target from one mixture with a score-based prior learned on public scans."""

    name = "bss"
    headline = "msssim"
    model: ScoreModel | None = None  # trained once per run, reused (e.g. along the a-curve)
    report: engine.TrainReport | None = None
    applies_to = ("mixup",)
    observes = "one mixture per test patch (and a, when attack.bss.known_a); public scans for the prior"

    def run(self, defense: Defense, task: Task, cfg: RunConfig, *, run_dir: Path,
            progress: bool = True) -> AttackResult:
        bss, device = cfg.attack.bss, engine.resolve_device(cfg.device)
        if self.model is None:
            self.model = ScoreModel(bss, device, cfg.train.amp)
            self.report = self.model.fit(task, cfg, workdir=run_dir, progress=progress)
        model, report = self.model, self.report
        mixtures, alphas, targets, references, windows = victim_patches(defense, task, cfg)
        assumed = alphas if bss.known_a else torch.full_like(alphas, 0.5)
        levels = model.sigmas[model.sigmas <= bss.start_sigma] if bss.start_sigma > 0 else model.sigmas
        levels = levels if len(levels) else model.sigmas[-1:]

        def attack(seed: int, count: int = len(mixtures)) -> tuple[torch.Tensor, torch.Tensor]:
            """The attacker: separates the first ``count`` mixtures, seeing them and a only."""
            generator = torch.Generator(device=device).manual_seed(seed)
            m = mixtures[:count].to(device)
            start = (m.clone(), m.clone()) if bss.start_sigma > 0 else None  # both sources = m
            x1, x2 = separate(m, assumed[:count].to(device), model, levels.to(device),
                              bss.steps_per_level, bss.step_lr, generator=generator,
                              gamma_scale=bss.gamma_scale, final_denoise=bss.final_denoise, init=start)
            return x1.cpu().clamp(0, 1), x2.cpu().clamp(0, 1)

        x1, x2 = attack(cfg.seed + SEED_OFFSET)
        recovered = torch.maximum(_msssim(x1, targets), _msssim(x2, targets))
        mixture_guess = _msssim(mixtures, targets)
        oracle = _msssim(((mixtures - (1 - _col(alphas)) * references) / _col(alphas)).clamp(0, 1), targets)
        mean = public_statistics(task)[0][None]
        template = _msssim(torch.stack([mean[w] for w in windows]), targets)
        inits = [attack(cfg.seed + SEED_OFFSET + 1 + i, count=1) for i in range(bss.n_inits)]
        figures.save_atomic(figures.separation_examples(targets[0], references[0], mixtures[0],
                                                        [(s1[0], s2[0]) for s1, s2 in inits],
                                                        float(alphas[0])), run_dir / FIGURE)
        table = [{"guess": name, "msssim_mean": float(v.mean()), "msssim_std": float(v.std(unbiased=False))}
                 for name, v in (("bss (Langevin separation)", recovered), ("mixture as guess", mixture_guess),
                                 ("public mean as guess", template), ("oracle knowing the reference", oracle))]
        metrics = {"msssim": table[0]["msssim_mean"], "msssim_std": table[0]["msssim_std"],
                   "mixture_msssim": table[1]["msssim_mean"], "template_msssim": table[2]["msssim_mean"],
                   "oracle_msssim": table[3]["msssim_mean"]}
        settings = {"known_a": bss.known_a, "n_patches": len(targets), "sigma_1": float(model.sigmas[0]),
                    "num_sigmas": bss.num_sigmas, "sampling_levels": len(levels),
                    "sampling_sigma_start": float(levels[0]), "score_train_seconds": report.seconds,
                    "score_iterations": report.iterations}
        return AttackResult(metrics, "bss", table, {"figure": FIGURE}, settings)


def victim_patches(defense: Defense, task: Task, cfg: RunConfig) -> tuple[torch.Tensor, ...]:
    """The harness: ``n_patches`` patches centred on brain voxels of test scans, each scan sent
    with a fresh key. Returns the observed mixtures ``[n,1,p,p,p]`` and weights ``[n]``, and
    the truth kept for scoring: the targets, the references and each patch's window."""
    p, n = cfg.train.patch_size, cfg.attack.bss.n_patches
    rng = np.random.default_rng(cfg.seed + SEED_OFFSET)
    generator = torch.Generator().manual_seed(cfg.seed + SEED_OFFSET)
    scans = task.scans("test")
    crops: list[list[torch.Tensor]] = [[], [], []]
    alphas, windows = [], []
    for i in range(n):
        image, label = task.load(scans[i % len(scans)])
        key = defense.new_key(generator)
        proxy = defense.encode(image[None], key)[0]
        brain = np.argwhere(label.numpy() > 0)
        centre = brain[rng.integers(len(brain))] if len(brain) else np.array(label.shape) // 2
        start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, s in zip(centre, label.shape)]
        window = (slice(None), *(slice(s, s + p) for s in start))
        for out, volume in zip(crops, (proxy, image, key.ref_image[0])):
            out.append(volume[window])
        alphas.append(key.a)
        windows.append(window)
    mixtures, targets, references = (torch.stack(c) for c in crops)
    return mixtures, torch.tensor(alphas), targets, references, windows


def _col(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, 1, 1, 1, 1)


def _msssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ms_ssim3d(x.float(), y.float(), data_range=1.0)
