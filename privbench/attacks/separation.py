"""``separation``: a network that separates Mixup-Privacy's mixtures, trained on public scans.

Threat model (Kerckhoffs): the attacker knows the scheme and its public settings (the mixing
weight is drawn from ``U(mixup.eval_a_min, mixup.eval_a_max)``), not the keys. It trains a 3D
U-Net on its public pool to split synthetic mixtures ``a·x1 + (1−a)·x2`` of two public scans
(co-located patches, ``a`` drawn as the defense draws it) into both sources, with a
permutation-invariant L1 loss (the better of the two assignments), then separates every request
window by window. It links each request to the clean gallery by the better-matching of its two
separated sources (residual correlation).

The harness scores the MS-SSIM of the better source against the true target and the linkage
top-1 of the requests, beside the mixture itself, the public mean and an oracle that knows the
reference, as guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privbench import engine, roc, streams
from privbench.attacks import learned
from privbench.attacks import linkage as linkage_attack
from privbench.attacks.base import Attack, AttackResult, Client, Observation, Truth, Victims
from privbench.config import EvalConfig, RunConfig, require
from privbench.metrics import ms_ssim3d
from privbench.nets import EncoderNet
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS

CHECKPOINT = "separation_net.pt"


@dataclass
class SeparationConfig:
    """A learned separator of two-source mixtures, trained on public scans."""

    iterations: int = 400  # training on synthetic mixtures of the public pool's patches
    batch_size: int = 4
    lr: float = 1e-3  # Adam
    features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)  # the separator U-Net's widths

    PRESETS = {"test": {"iterations": 3, "features": (4, 4, 8, 8, 16, 4)},
               "paper": {"iterations": 20_000, "features": (32, 32, 64, 128, 256, 32)}}

    def validate(self, run: RunConfig) -> None:
        require((self.iterations >= 0 and self.batch_size >= 1 and 0 < self.lr <= 1,
                 "attack.separation.iterations must be >= 0, batch_size >= 1 and lr in (0, 1]"),
                (len(self.features) == 6 and all(f >= 1 for f in self.features),
                 "attack.separation.features must be six positive widths"))


class SyntheticMixtures:
    """Batch ``i`` of mixtures of two different public scans' co-located patches, ``a`` drawn
    from the public range: ``image`` the mixture, ``label`` the two sources ``[B,2,p,p,p]``."""

    def __init__(self, public: torch.Tensor, a_range: tuple[float, float], patch: int, batch: int, seed: int):
        self.public, self.a_range, self.patch, self.size, self.seed = public, a_range, patch, batch, seed

    def batch(self, iteration: int) -> engine.Batch:
        g = streams.generator(self.seed, "mixtures", str(iteration))
        mixtures, sources = [], []
        for _ in range(self.size):
            first, second = torch.randperm(len(self.public), generator=g)[:2].tolist()
            w = learned.window(g, tuple(self.public.shape[2:]), self.patch)
            lo, hi = self.a_range
            a = lo + (hi - lo) * float(torch.rand((), generator=g))
            x1, x2 = self.public[first][w], self.public[second][w]
            mixtures.append(a * x1 + (1 - a) * x2)
            sources.append(torch.cat([x1, x2]))
        return engine.Batch(torch.stack(mixtures), torch.stack(sources), [])


def permutation_invariant_l1(out: torch.Tensor, batch: engine.Batch) -> torch.Tensor:
    """L1 of the better assignment of the two outputs to the two sources, per sample."""
    straight = (out - batch.label).abs().flatten(1).mean(1)
    swapped = (out.flip(1) - batch.label).abs().flatten(1).mean(1)
    return torch.minimum(straight, swapped).mean()


class Separator(torch.nn.Module):
    """A U-Net from a mixture ``[B,1,...]`` to two sources ``[B,2,...]`` in [0, 1]."""

    def __init__(self, features: tuple[int, ...]):
        super().__init__()
        self.net = EncoderNet(features)
        self.net.net.final_conv = torch.nn.Conv3d(features[-1], 2, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_attack("separation", description="Separate each mixture into its two sources with a U-Net "
                 "trained on mixtures of public scans (MS-SSIM, linkage)",
                 paper="privbench (Kerckhoffs attacker on Kim et al., IPMI 2023)",
                 requires=(REPEATED_SCANS, PUBLIC_POOL), config=SeparationConfig)
class Separation(Attack):
    """Recover each target with a separator learned on public mixtures."""

    name = "separation"
    headline = "linkage_top1"
    identifies = "linkage_top1"
    recovers = "msssim"
    naive = {"recovery": {"mixture as guess": "mixture_msssim"},
             "identity": {"mixture as guess": "mixture_linkage_top1"}}
    applies_to = ("mixup",)
    grants = ("public_pool", "gallery")
    observes = ("every test scan's request (one mixture); the public pool; a gallery of clean scans; "
                "the defense's public range of a")

    def victims(self, client: Client, config: SeparationConfig) -> Victims:
        """Every test scan sent with a fresh key; the truth keeps each key's reference (for the
        oracle row, where the key has one)."""
        requests, subjects, sessions, targets, weights, references = [], [], [], [], [], []
        for scan in client.task.scans("test"):
            image = client.task.load(scan)[0][None]
            key = client.new_key()
            requests.append(client.defense.encode(image, key))
            subjects.append(scan.subject)
            sessions.append(scan.session)
            targets.append(image)
            weights.append(getattr(key, "a", None))
            references.append(getattr(key, "ref_image", None))
        return Victims(requests, Truth(subjects, sessions, targets, weights, {"reference": references}))

    def reconstruct(self, observation: Observation) -> dict[str, Any]:
        config, run = observation.config, observation.runtime
        described = observation.defense.config.get("mixup", {})
        a_range = (described.get("eval_a_min", 0.5), described.get("eval_a_max", 0.5))
        public = observation.public.images()
        net = learned.seeded(observation.seed, lambda: Separator(config.features)).to(run.device)
        report = learned.fit(net, SyntheticMixtures(public, a_range, run.patch_size, config.batch_size,
                                                    observation.seed),
                             permutation_invariant_l1, iterations=config.iterations, batch_size=config.batch_size,
                             lr=config.lr, features=config.features, run=run, name="separation",
                             checkpoint=CHECKPOINT)
        requests = torch.cat([request[:1] for request in observation.requests]).float()
        net.eval()
        sources = engine.sliding_window_predict(net, requests, run.patch_size, EvalConfig(), run.device, run.amp,
                                                softmax=False).clamp(0, 1).cpu()
        gallery = observation.gallery
        scores = torch.maximum(*(linkage_attack.similarities(sources[:, k:k + 1], gallery, msssim=False)["correlation"]
                                 for k in range(2)))
        return {"sources": sources, "scores": scores,
                "settings": {"separator_train_seconds": report.seconds, "separator_iterations": report.iterations,
                             "a_range": list(a_range)}}

    def score(self, guesses: dict[str, Any], truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        gallery, sources = observation.gallery, guesses["sources"]
        targets = torch.cat(truth.images)
        requests = torch.cat([request[:1] for request in observation.requests]).float()
        recovered = torch.maximum(_msssim(sources[:, :1], targets), _msssim(sources[:, 1:], targets))
        plain = linkage_attack.similarities(requests, gallery, msssim=False)["correlation"]
        linked = linkage_attack.rank({"separated": guesses["scores"], "mixture": plain},
                                     truth.subjects, truth.sessions, gallery)
        low_fpr = roc.report({name: linkage_attack.identity_scores(s, truth.subjects, truth.sessions, gallery)
                              for name, s in (("separated", guesses["scores"]), ("mixture", plain))},
                             run_dir, self.name, f"separation on {observation.defense.name}")
        mixture = float(_msssim(requests, targets).mean())
        template = float(_msssim(gallery.mean.expand_as(targets[:, 0])[:, None], targets).mean())
        table = [{"guess": "separated (the better source)", "msssim": float(recovered.mean()),
                  "linkage_top1": linked["separated"]["top1"], **roc.headline(low_fpr["separated"])},
                 {"guess": "mixture as guess", "msssim": mixture, "linkage_top1": linked["mixture"]["top1"],
                  **roc.headline(low_fpr["mixture"])},
                 {"guess": "public mean as guess", "msssim": template},
                 {"guess": "chance", "linkage_top1": linked["mixture"]["chance_top1"], "auc": 0.5}]
        if all(r is not None for r in truth.extra["reference"]):  # an oracle that knows the key
            a = torch.tensor(truth.weights).reshape(-1, 1, 1, 1, 1)
            oracle = (requests - (1 - a) * torch.cat([r[:1] for r in truth.extra["reference"]])) / a
            table.insert(2, {"guess": "oracle knowing the reference", "msssim": float(_msssim(oracle, targets).mean())})
        metrics = {"msssim": float(recovered.mean()), "msssim_std": float(recovered.std(unbiased=False)),
                   "linkage_top1": linked["separated"]["top1"], **roc.headline(low_fpr["separated"]),
                   "mixture_msssim": mixture, "template_msssim": template,
                   "mixture_linkage_top1": linked["mixture"]["top1"], "chance_top1": linked["mixture"]["chance_top1"]}
        settings = {**guesses["settings"], "n_requests": len(targets),
                    "roc_pairs": {k: low_fpr["separated"][k] for k in ("n_positive", "n_negative")}}
        return AttackResult(metrics, self.name, table, roc.files(self.name), settings)


def _msssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ms_ssim3d(x.float().clamp(0, 1), y.float(), data_range=1.0).reshape(-1)
