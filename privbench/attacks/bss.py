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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from privbench import engine, figures, streams
from privbench.attacks import learned
from privbench.attacks.base import Attack, AttackResult, Client, Observation, PublicPool, Truth, Victims
from privbench.config import MAX_SIGMA, MAX_WEIGHT, RunConfig, TrainConfig, require
from privbench.metrics import ms_ssim3d
from privbench.nets import ScoreNet
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL

@dataclass
class BssConfig:
    """Blind source separation of a mixture: NCSN score model + annealed Langevin dynamics."""

    iterations: int = 600  # score-model training on the public pool's patches (the paper: 100k)
    batch_size: int = 4  # the paper: 16
    lr: float = 5e-4  # Adam, as in the paper
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # the score U-Net++'s widths
    num_sigmas: int = 20  # geometric noise levels from sigma_1 (largest patch distance) to sigma_min
    sigma_min: float = 0.01
    ema: float = 0.999  # decay of the weights' exponential moving average (used for sampling)
    steps_per_level: int = 5  # Langevin steps T per noise level
    step_lr: float = 2e-5  # eta_i = step_lr * sigma_i^2 / sigma_min^2
    gamma_scale: float = 1.0  # gamma_i = gamma_scale * sigma_i, the mixture constraint's width
    final_denoise: bool = True  # one last Tweedie step x += sigma_min^2 * score(x, sigma_min)
    start_sigma: float = 1.0  # > 0: sample only the levels <= this, both sources starting at the
    # mixture (a warm start for short CPU budgets); 0: every level from sigma_1, uniform start
    known_a: bool = True  # the attacker knows a (strongest case; a grant); else it assumes a = 0.5
    n_patches: int = 8  # test patches separated (each from another test scan when there are enough)
    n_inits: int = 3  # random initialisations shown in the figure

    PRESETS = {"test": {"iterations": 3, "features": (8, 8, 16, 16, 32, 8), "num_sigmas": 4,
                        "steps_per_level": 2, "n_patches": 2, "n_inits": 2},
               "paper": {"iterations": 100_000, "batch_size": 16, "features": (32, 32, 64, 128, 256, 32),
                         "num_sigmas": 232, "n_patches": 64, "start_sigma": 0.0}}

    def validate(self, run: RunConfig) -> None:
        require((self.iterations >= 0 and self.batch_size >= 1 and 0 < self.lr <= 1,
                 "attack.bss.iterations must be >= 0, batch_size >= 1 and lr in (0, 1]"),
                (len(self.features) == 6 and min(self.features) >= 1,
                 "attack.bss.features must be 6 positive ints (BasicUNetPlusPlus)"),
                (self.num_sigmas >= 2 and 0 < self.sigma_min <= 1,
                 "attack.bss.num_sigmas must be >= 2 and attack.bss.sigma_min in (0, 1]"),
                (0 <= self.ema < 1, "attack.bss.ema must be in [0, 1)"),
                (self.steps_per_level >= 1 and 0 < self.step_lr <= 1 and 0 < self.gamma_scale <= MAX_WEIGHT,
                 f"attack.bss.steps_per_level must be >= 1, step_lr in (0, 1] and gamma_scale in (0, {MAX_WEIGHT:g}]"),
                (0 <= self.start_sigma <= MAX_SIGMA, f"attack.bss.start_sigma must be in [0, {MAX_SIGMA}]"),
                (self.n_patches >= 1 and self.n_inits >= 1, "attack.bss.n_patches and attack.bss.n_inits must be >= 1"))


Score = Callable[[torch.Tensor, float], torch.Tensor]  # grad_x log p_sigma(x)
CHECKPOINT = "bss_score.pt"
FIGURE = "bss_examples.png"


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

    def fit(self, pool: PublicPool, *, patch_size: int, seed: int, checkpoint_every: int,
            workdir: Path | None, progress: bool = True) -> engine.TrainReport:
        """Train on patches of the attacker's public pool, resuming from ``workdir``."""
        train_cfg = TrainConfig(iterations=self.cfg.iterations, batch_size=self.cfg.batch_size,
                                patch_size=patch_size, lr=self.cfg.lr, lr_schedule="constant",
                                features=self.cfg.features, checkpoint_every=checkpoint_every, amp=self.amp)
        sampler, step, state = self.prepare(pool, patch_size=patch_size, seed=seed)
        return engine.train(step, sampler, train_cfg, state=state, device=self.device, workdir=workdir,
                            progress=progress, name="bss score", checkpoint=CHECKPOINT)

    def prepare(self, pool: PublicPool, *, patch_size: int, seed: int) -> tuple[engine.PatchSampler, engine.Step,
                                                                               dict[str, object]]:
        """The noise levels (from the pool's patches), the training batches, one training step
        and the state a checkpoint holds (also what ``privbench bench`` times)."""
        probe = engine.PatchSampler(pool, patch_size, 128, seed, role="public").batch(0)
        self.sigmas = noise_levels(largest_distance(probe.image), self.cfg.sigma_min, self.cfg.num_sigmas)
        sampler = engine.PatchSampler(pool, patch_size, self.cfg.batch_size, seed, role="public")
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        return sampler, self._step(optimizer, seed), {"net": self.net, "ema": self.ema, "optimizer": optimizer}

    def _step(self, optimizer: torch.optim.Optimizer, seed: int) -> engine.Step:
        def step(batch: engine.Batch, iteration: int) -> dict[str, float]:
            self.net.train()
            rng = streams.generator(seed, "noise", str(iteration))
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
                 paper="Kim et al., IPMI 2023 (Sec. 4); Jayaram & Thickstun, ICML 2020", requires=(PUBLIC_POOL,),
                 config=BssConfig)
class BlindSourceSeparation(Attack):
    """Recover the target from one mixture with a score-based prior learned on public scans."""

    name = "bss"
    headline = "msssim"
    recovers = "msssim"
    naive = {"recovery": {"mixture as guess": "mixture_msssim"}}
    model: ScoreModel | None = None  # trained once per run, reused (e.g. along the a-curve)
    report: engine.TrainReport | None = None
    applies_to = ("mixup",)
    observes = "one mixture per test patch (and a, when attack.bss.known_a); public scans for the prior"

    def granted(self, config: BssConfig, defense: str = "") -> tuple[str, ...]:
        return ("public_pool", "mixing_weight") if config.known_a else ("public_pool",)

    def victims(self, client: Client, config: BssConfig) -> Victims:
        """``n_patches`` patches centred on brain voxels of test scans, each scan sent with a
        fresh key; the truth keeps the targets, the references and each patch's window."""
        p, n = client.cfg.train.patch_size, config.n_patches
        rng = client.rng("patches")
        scans = client.task.scans("test")
        mixtures, targets, references, windows, weights = [], [], [], [], []
        for i in range(n):
            scan = scans[i % len(scans)]
            image, label = client.task.load(scan)
            key = client.new_key()
            proxy = client.defense.encode(image[None], key)[0]
            brain = np.argwhere(label.numpy() > 0)
            centre = brain[rng.integers(len(brain))] if len(brain) else np.array(label.shape) // 2
            start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, s in zip(centre, label.shape)]
            window = (slice(None), *(slice(s, s + p) for s in start))
            mixtures.append(proxy[window])
            targets.append(image[window])
            references.append(key.ref_image[0][window])
            windows.append(window)
            weights.append(key.a)
        subjects, sessions = zip(*((scans[i % len(scans)].subject, scans[i % len(scans)].session)
                                   for i in range(n)))
        truth = Truth(list(subjects), list(sessions), targets, weights,
                      {"references": references, "windows": windows})
        return Victims(mixtures, truth)

    def reconstruct(self, observation: Observation) -> dict[str, Any]:
        """Train the prior on the public pool (once), then separate every mixture; a few more
        separations of the first one, from other starting noise, for the figure."""
        bss, run = observation.config, observation.runtime
        if self.model is None:
            self.model = learned.seeded(observation.seed, lambda: ScoreModel(bss, run.device, run.amp))
            self.report = self.model.fit(observation.public, patch_size=run.patch_size, seed=observation.seed,
                                         checkpoint_every=run.checkpoint_every, workdir=run.workdir,
                                         progress=run.progress)
        model = self.model
        mixtures = torch.stack(observation.requests)
        alphas = torch.tensor(observation.weights if bss.known_a else [0.5] * len(mixtures))
        levels = model.sigmas[model.sigmas <= bss.start_sigma] if bss.start_sigma > 0 else model.sigmas
        levels = levels if len(levels) else model.sigmas[-1:]

        def attack(seed: int, count: int = len(mixtures)) -> tuple[torch.Tensor, torch.Tensor]:
            generator = torch.Generator(device=run.device).manual_seed(seed)
            m = mixtures[:count].to(run.device)
            start = (m.clone(), m.clone()) if bss.start_sigma > 0 else None  # both sources = m
            x1, x2 = separate(m, alphas[:count].to(run.device), model, levels.to(run.device),
                              bss.steps_per_level, bss.step_lr, generator=generator,
                              gamma_scale=bss.gamma_scale, final_denoise=bss.final_denoise, init=start)
            return x1.cpu().clamp(0, 1), x2.cpu().clamp(0, 1)

        return {"sources": attack(streams.seed_of(observation.seed, "separate")),
                "inits": [attack(streams.seed_of(observation.seed, "figure", str(i)), count=1)
                          for i in range(bss.n_inits)],
                "settings": {"sigma_1": float(model.sigmas[0]), "sampling_levels": len(levels),
                             "sampling_sigma_start": float(levels[0]),
                             "score_train_seconds": self.report.seconds,
                             "score_iterations": self.report.iterations}}

    def score(self, guesses: dict[str, Any], truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        mixtures, targets = torch.stack(observation.requests), torch.stack(truth.images)
        references, alphas = torch.stack(truth.extra["references"]), torch.tensor(truth.weights)
        x1, x2 = guesses["sources"]
        recovered = torch.maximum(_msssim(x1, targets), _msssim(x2, targets))
        mixture_guess = _msssim(mixtures, targets)
        oracle = _msssim(((mixtures - (1 - _col(alphas)) * references) / _col(alphas)).clamp(0, 1), targets)
        mean = observation.public.statistics()[0][None]
        template = _msssim(torch.stack([mean[w] for w in truth.extra["windows"]]), targets)
        figures.save_atomic(figures.separation_examples(targets[0], references[0], mixtures[0],
                                                        [(s1[0], s2[0]) for s1, s2 in guesses["inits"]],
                                                        float(alphas[0])), run_dir / FIGURE)
        table = [{"guess": name, "msssim_mean": float(v.mean()), "msssim_std": float(v.std(unbiased=False))}
                 for name, v in (("bss (Langevin separation)", recovered), ("mixture as guess", mixture_guess),
                                 ("public mean as guess", template), ("oracle knowing the reference", oracle))]
        metrics = {"msssim": table[0]["msssim_mean"], "msssim_std": table[0]["msssim_std"],
                   "mixture_msssim": table[1]["msssim_mean"], "template_msssim": table[2]["msssim_mean"],
                   "oracle_msssim": table[3]["msssim_mean"]}
        settings = {"known_a": observation.config.known_a, "n_patches": len(targets),
                    "num_sigmas": observation.config.num_sigmas, **guesses["settings"]}
        return AttackResult(metrics, "bss", table, {"figure": FIGURE}, settings)


def _col(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, 1, 1, 1, 1)


def _msssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ms_ssim3d(x.float(), y.float(), data_range=1.0)
