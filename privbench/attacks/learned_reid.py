"""``learned-reid``: re-identification with a metric network trained on proxies of public scans.

Threat model: the attacker holds the public pool and a clean gallery, and makes proxies of its
public scans the way the defense makes them: through the encoding's weights where the server
holds them (white-box: privacy-net, deformation, grant ``weights``), by mixing public scans with
other public scans as stand-in references for mixup (Kerckhoffs: ``a`` drawn from the public
evaluation range), or none at all for ``none``. It trains an embedding network with a
contrastive loss (NT-Xent) whose positives are two sessions of one public subject: one as a
proxy, the other as a proxy or as the clean scan, so that requests meet both other requests and
the clean gallery in one space. Then it embeds every request and the gallery and scores them
by cosine similarity.

The network is a small 3D encoder of MONAI residual units by default, whose embedding is its
coarse feature map (not pooled: where a feature lies is part of who the scan is), its inputs the
scan minus the public mean at unit variance; ``backbone=timm:<model>`` runs a timm 2D backbone
(no pretrained weights) over evenly spaced axial slices and averages their embeddings (timm is
an optional extra that needs a CUDA build of torch, imported only here and only then).

The harness scores the linkage of the requests to the gallery (headline, with the ROC
statistics), the re-identification among the requests (as ``reid``), the same network on the
unprotected scans, the untrained network (what training added), and chance.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from privbench import engine, roc, streams
from privbench.attacks import learned
from privbench.attacks import linkage as linkage_attack
from privbench.attacks import reid
from privbench.attacks.base import Attack, AttackResult, Observation, Truth
from privbench.config import RunConfig, require
from privbench.errors import PrivbenchError
from privbench.metrics import linkage
from privbench.mixing import mix
from privbench.registry import DEFENSES, register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS

CHECKPOINT = "learned_reid_net.pt"


@dataclass
class LearnedReidConfig:
    """A contrastive embedding of proxies of public scans."""

    backbone: str = "monai"  # monai: a 3D encoder | timm:<model>: a timm 2D backbone over axial slices
    iterations: int = 300
    subjects_per_batch: int = 6  # public subjects per batch, two scans each
    lr: float = 1e-3  # Adam
    widths: tuple[int, ...] = (8, 16, 32)  # the 3D encoder's stages, each halving the resolution
    embedding: int = 8  # channels of the coarse feature map that is the embedding
    temperature: float = 0.1  # NT-Xent
    clean_views: float = 0.5  # how often a positive's second view is the clean scan instead of a proxy
    keys: int = 4  # proxies made per public scan (fresh keys) where the encoding has a key
    slices: int = 16  # timm backbones: axial slices per volume

    PRESETS = {"test": {"iterations": 3, "widths": (4, 8, 8), "embedding": 4, "keys": 2},
               "paper": {"iterations": 5_000, "widths": (16, 32, 64, 128), "embedding": 16}}

    def validate(self, run: RunConfig) -> None:
        require((self.backbone == "monai" or (self.backbone.startswith("timm:") and len(self.backbone) > 5),
                 "attack.learned_reid.backbone must be monai or timm:<model name>"),
                (self.iterations >= 0 and self.subjects_per_batch >= 2 and 0 < self.lr <= 1,
                 "attack.learned_reid.iterations must be >= 0, subjects_per_batch >= 2, lr in (0, 1]"),
                (len(self.widths) >= 1 and all(w >= 1 for w in self.widths) and self.embedding >= 1,
                 "attack.learned_reid.widths must be one or more positive widths and embedding >= 1"),
                (0 < self.temperature <= 10 and 0 <= self.clean_views <= 1 and self.keys >= 1 and self.slices >= 1,
                 "attack.learned_reid.temperature must be in (0, 10], clean_views in [0, 1], keys and slices >= 1"))


def standardised(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What the embedders see: the volume minus the public mean, scaled to unit variance per
    volume (sessions differ in intensity scale and contrast; the shared anatomy says nothing)."""
    r = x - mean
    centred = r - r.mean(dim=tuple(range(1, r.dim())), keepdim=True)
    return centred / centred.std(dim=tuple(range(1, r.dim())), keepdim=True).clamp(min=1e-6)


class VolumeEmbedder(torch.nn.Module):
    """A 3D MONAI encoder (strided residual units) from a volume ``[B,1,D,H,W]``, standardised
    against the public mean ``[D,H,W]``, to a unit embedding ``[B,E]``: its coarse feature map,
    projected to ``embedding`` channels by a 1x1x1 convolution and flattened. Where in the
    brain a feature lies is part of who the scan is, so nothing is pooled away."""

    def __init__(self, widths: tuple[int, ...], embedding: int, mean: torch.Tensor):
        super().__init__()
        from monai.networks.blocks import ResidualUnit

        self.register_buffer("mean", mean.float())
        channels = (1, *widths)
        units = [ResidualUnit(3, channels[i], channels[i + 1], strides=2, subunits=2, norm=("instance", {"affine": True}))
                 for i in range(len(widths))]
        self.net = torch.nn.Sequential(*units, torch.nn.Conv3d(widths[-1], embedding, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(standardised(x, self.mean)).flatten(1), dim=1)


class SliceEmbedder(torch.nn.Module):
    """A timm 2D backbone over ``slices`` evenly spaced axial slices; the embedding is the
    normalised mean of the slices' embeddings. Built without pretrained weights (nothing is
    downloaded)."""

    def __init__(self, model: str, embedding: int, slices: int, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        try:
            import timm  # optional extra: needs torchvision, hence a CUDA build of torch
        except Exception as error:  # ImportError, or torchvision's operator error on a CPU build
            raise PrivbenchError(f"attack.learned_reid.backbone=timm:{model} needs timm, which did not import "
                                 f"({type(error).__name__}: {error}); install privbench[timm] with a CUDA "
                                 f"build of torch, or use backbone=monai") from None
        try:
            self.net = timm.create_model(model, pretrained=False, in_chans=1, num_classes=embedding)
        except Exception as error:
            raise PrivbenchError(f"timm cannot build {model!r}: {error}") from None
        self.slices = slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, b, depth = standardised(x, self.mean), x.shape[0], x.shape[2]
        index = torch.linspace(0, depth - 1, min(self.slices, depth)).round().long().to(x.device)
        planes = x[:, :, index].transpose(1, 2).flatten(0, 1)  # [B*S, 1, H, W]
        return F.normalize(self.net(planes).reshape(b, len(index), -1).mean(1), dim=1)


def embedder(config: LearnedReidConfig, mean: torch.Tensor) -> torch.nn.Module:
    """The configured embedding network, its inputs standardised against the public mean."""
    if config.backbone.startswith("timm:"):
        return SliceEmbedder(config.backbone[5:], config.embedding, config.slices, mean)
    return VolumeEmbedder(config.widths, config.embedding, mean)


def has_white_box(defense: str) -> bool:
    """Whether the registered defense ``defense`` gives the server trained weights (a class that
    overrides ``white_box``); True where that cannot be told (a plugin's factory function)."""
    from privbench.defenses.base import Defense

    factory = DEFENSES.get(defense).factory
    return not (inspect.isclass(factory) and issubclass(factory, Defense)) or factory.white_box is not Defense.white_box


def public_proxies(observation: Observation, images: torch.Tensor, subjects: list[str], keys: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``[N, keys, 1, D, H, W]``: proxies the attacker makes of its public scans, each with a
    fresh key it draws (see the module for how, per defense)."""
    box, name = observation.white_box, observation.defense.name
    if box is not None:
        n = 1 if box.deterministic else keys
        with torch.no_grad():
            return torch.stack([box.encode(images, generator) for _ in range(n)], 1)
    if name == "none":
        return images[:, None]
    if name == "mixup":  # stand-in references: public scans of other subjects, a from the public range
        described = observation.defense.config.get("mixup", {})
        lo, hi = described.get("eval_a_min", 0.5), described.get("eval_a_max", 0.5)
        out = torch.empty(len(images), keys, *images.shape[1:])
        for i, subject in enumerate(subjects):
            others = [j for j, s in enumerate(subjects) if s != subject]
            for k in range(keys):
                j = others[int(torch.randint(len(others), (), generator=generator))]
                a = lo + (hi - lo) * float(torch.rand((), generator=generator))
                out[i, k] = mix(images[i], images[j], a)
        return out
    raise PrivbenchError(f"learned-reid cannot make proxies for {name!r}: it has no white-box encoder "
                         "and is not a public scheme the attacker knows (none, mixup)")


class SessionPairs:
    """Batch ``i``: for each of up to ``subjects`` public subjects with two or more scans, two
    of its scans, the first as a proxy, the second as a proxy or (with probability
    ``clean_views``) the clean scan; ``label`` is the subject's index. A pure function of the
    seed and ``i``. Subjects ``held_out`` (for validation) are never drawn."""

    def __init__(self, proxies: torch.Tensor, clean: torch.Tensor, subjects: list[str], per_batch: int,
                 clean_views: float, seed: int, held_out: frozenset[str] = frozenset()):
        self.proxies, self.clean, self.per_batch, self.clean_views, self.seed = proxies, clean, per_batch, clean_views, seed
        scans = {s: [i for i, t in enumerate(subjects) if t == s] for s in dict.fromkeys(subjects) if s not in held_out}
        self.groups = [group for group in scans.values() if len(group) >= 2]
        if len(self.groups) < 2:
            raise PrivbenchError("learned-reid needs at least two public subjects with two or more scans "
                                 f"each; the public pool has {len(self.groups)} (raise task.public_fraction)")

    def batch(self, iteration: int) -> engine.Batch:
        g = streams.generator(self.seed, "pairs", str(iteration))
        chosen = torch.randperm(len(self.groups), generator=g)[:self.per_batch].tolist()
        first, second = [], []
        for c in chosen:
            group = self.groups[c]
            a, b = (group[i] for i in torch.randperm(len(group), generator=g)[:2].tolist())
            first.append(self._proxy(a, g))
            clean = float(torch.rand((), generator=g)) < self.clean_views
            second.append(self.clean[b] if clean else self._proxy(b, g))
        label = torch.tensor(chosen + chosen)
        return engine.Batch(torch.stack(first + second), label, [])

    def _proxy(self, scan: int, g: torch.Generator) -> torch.Tensor:
        return self.proxies[scan, int(torch.randint(self.proxies.shape[1], (), generator=g))]


def nt_xent(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive loss of unit embeddings ``[B,E]``: each item's other items of the same label
    are its positives, every other item its negatives (NT-Xent / supervised contrastive)."""
    logits = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1).clamp(min=1)).mean()


def validation_subjects(subjects: list[str], seed: int) -> frozenset[str]:
    """A third of the public subjects with two or more scans (at least two), held out of
    training to choose between the trained and the untrained network; none where fewer than
    four such subjects exist (training needs two)."""
    eligible = [s for s in dict.fromkeys(subjects) if subjects.count(s) >= 2]
    if len(eligible) < 4:
        return frozenset()
    order = torch.randperm(len(eligible), generator=streams.generator(seed, "validation")).tolist()
    return frozenset(eligible[i] for i in order[:max(2, len(eligible) // 3)])


def validation_score(net: torch.nn.Module, proxies: torch.Tensor, clean: torch.Tensor, subjects: list[str],
                     held_out: frozenset[str], device: torch.device) -> tuple[float, float]:
    """(top-1, mAP) of linking a proxy of each held-out public scan to the clean public scans
    (its own scan excluded): how well an embedding does on people it was not trained on."""
    probes = [i for i, s in enumerate(subjects) if s in held_out]
    probe_emb, gallery_emb = embed(net, proxies[probes, 0], device), embed(net, clean, device)
    exclude = torch.zeros(len(probes), len(subjects), dtype=torch.bool)
    exclude[range(len(probes)), probes] = True
    scores = linkage(probe_emb @ gallery_emb.T, [subjects[i] for i in probes], subjects, exclude)
    return scores["top1"], scores["map"]


def embed(net: torch.nn.Module, volumes: torch.Tensor, device: torch.device, chunk: int = 4) -> torch.Tensor:
    """Unit embeddings ``[N,E]`` of volumes ``[N,1,D,H,W]``, a few at a time."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(volumes[i:i + chunk].to(device)).float().cpu() for i in range(0, len(volumes), chunk)])


@register_attack("learned-reid", description="Re-identify and link requests with a metric network "
                 "trained contrastively on proxies of public scans (top-1, mAP, TPR at low FPR)",
                 paper="privbench (learned attacker; Elazar & Goldberg, EMNLP 2018)",
                 requires=(REPEATED_SCANS, PUBLIC_POOL), config=LearnedReidConfig)
class LearnedReid(Attack):
    """Identify requests with an embedding learned on the attacker's own proxies."""

    name = "learned-reid"
    headline = "linkage_top1"
    identifies = "linkage_top1"
    applies_to = ("none", "mixup", "privacy-net", "deformation")
    grants = ("public_pool", "gallery", "weights")
    observes = ("every test scan's request; the public pool (turned into proxies: the encoder's weights "
                "where the server holds them, public stand-in references for mixup); a gallery of clean scans")

    def granted(self, config: LearnedReidConfig, defense: str = "") -> tuple[str, ...]:
        """The weights only where the defense has any (white-box)."""
        return self.grants if not defense or has_white_box(defense) else ("public_pool", "gallery")

    def reconstruct(self, observation: Observation) -> dict[str, Any]:
        """Train the embedding on public proxies; embed the requests and the gallery."""
        config, run, pool = observation.config, observation.runtime, observation.public
        images = pool.images()
        subjects = [scan.subject for scan in pool.scans()]
        g = torch.Generator().manual_seed(streams.seed_of(observation.seed, "proxies"))
        proxies = public_proxies(observation, images, subjects, config.keys, g)
        held_out = validation_subjects(subjects, observation.seed)
        pairs = SessionPairs(proxies, images, subjects, config.subjects_per_batch, config.clean_views,
                             observation.seed, held_out)
        make = lambda: embedder(config, proxies.flatten(0, 1).mean(0)[0])  # noqa: E731
        untrained = learned.seeded(observation.seed, make).to(run.device)
        net = learned.seeded(observation.seed, make).to(run.device)
        requests = torch.cat([request[:1] for request in observation.requests]).float()
        gallery = observation.gallery.images
        before = {"requests": embed(untrained, requests, run.device), "gallery": embed(untrained, gallery, run.device)}
        report = learned.fit(net, pairs, lambda out, batch: nt_xent(out, batch.label, config.temperature),
                             iterations=config.iterations, batch_size=2 * min(config.subjects_per_batch, len(pairs.groups)),
                             lr=config.lr, features=tuple(config.widths), run=run, name="learned-reid embedding",
                             checkpoint=CHECKPOINT)
        after = {"requests": embed(net, requests, run.device), "gallery": embed(net, gallery, run.device)}
        validation = {name: validation_score(model, proxies, images, subjects, held_out, run.device)
                      for name, model in (("trained", net), ("untrained", untrained))} if held_out else {}
        selected = "untrained" if validation and validation["untrained"] > validation["trained"] else "trained"
        return {"selected": after if selected == "trained" else before, "trained": after, "untrained": before,
                "settings": {"train_seconds": report.seconds, "iterations": report.iterations,
                             "backbone": config.backbone, "public_scans": len(images),
                             "training_subjects": len(pairs.groups), "validation_subjects": sorted(held_out),
                             "validation_top1_map": {k: list(v) for k, v in validation.items()},
                             "selected": selected, "proxies_per_scan": proxies.shape[1]}}

    def score(self, guesses: dict[str, Any], truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        gallery, chosen = observation.gallery, guesses["selected"]
        own = linkage_attack.own_scans(truth.subjects, truth.sessions, gallery).int().argmax(1)
        clean = chosen["gallery"][own]  # the requests' own scans, unprotected
        linked_scores = {name: guesses[name]["requests"] @ guesses[name]["gallery"].T
                         for name in ("selected", "trained", "untrained")}
        linked = linkage_attack.rank(linked_scores, truth.subjects, truth.sessions, gallery)
        among = {"requests": chosen["requests"] @ chosen["requests"].T, "unprotected": clean @ clean.T}
        reidentified = {name: reid.score(sim, truth) for name, sim in among.items()}
        low_fpr = roc.report({**{name: linkage_attack.identity_scores(s, truth.subjects, truth.sessions, gallery)
                                 for name, s in linked_scores.items()},
                              **{f"reid {name}": reid.identity_scores(sim, truth) for name, sim in among.items()}},
                             run_dir, self.name, f"learned-reid on {observation.defense.name}")
        keys, selected = ("top1", "map"), guesses["settings"]["selected"]
        table = [{"guess": f"requests vs the clean gallery ({selected} network, chosen on public validation)",
                  **{k: linked["selected"][k] for k in keys}, **roc.headline(low_fpr["selected"])},
                 {"guess": "requests vs requests", **{k: reidentified["requests"][k] for k in ("top1", "f1", "map")},
                  **roc.headline(low_fpr["reid requests"])},
                 {"guess": "unprotected scans vs each other",
                  **{k: reidentified["unprotected"][k] for k in ("top1", "f1", "map")},
                  **roc.headline(low_fpr["reid unprotected"])},
                 *({"guess": f"{name} network: requests vs the clean gallery", **{k: linked[name][k] for k in keys},
                    **roc.headline(low_fpr[name])} for name in ("trained", "untrained")),
                 {"guess": "chance", "top1": linked["selected"]["chance_top1"], "auc": 0.5}]
        metrics = {"linkage_top1": linked["selected"]["top1"], "linkage_map": linked["selected"]["map"],
                   **roc.headline(low_fpr["selected"]),
                   "top1": reidentified["requests"]["top1"], "f1": reidentified["requests"]["f1"],
                   "map": reidentified["requests"]["map"], "unprotected_top1": reidentified["unprotected"]["top1"],
                   "trained_linkage_top1": linked["trained"]["top1"], "untrained_linkage_top1": linked["untrained"]["top1"],
                   "chance_top1": linked["selected"]["chance_top1"], "reid_chance": reidentified["requests"]["chance"]}
        settings = {**guesses["settings"], "n_requests": len(truth.subjects),
                    "roc_pairs": {k: low_fpr["selected"][k] for k in ("n_positive", "n_negative")}}
        return AttackResult(metrics, self.name, table, roc.files(self.name), settings)
