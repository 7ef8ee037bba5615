"""``reference-recovery``: unmix many requests of one client at once (Carlini et al.'s InstaHide
attack, arXiv 2011.05315, on Mixup-Privacy).

Threat model: the server keeps every request one client sends over time
(``attack.reference_recovery.requests``: the test scans, again and again, each time with a fresh
key). The client's reference pool is finite and reused, so the requests are mixtures of a few
dozen volumes: ``m_i = a_i x_t(i) + (1 - a_i) r_k(i)``. The attacker knows the scheme and its
public settings (``a ~ U(mixup.eval_a_min, eval_a_max)``), not the keys.

The attacker: the requests span a space whose dimension is the number of distinct volumes in
them (their singular values drop to zero beyond it). Each volume is found as the hyperplane
that holds every request not containing it (random subsets of requests, as in RANSAC), which
also gives each request's two volumes and weights (:func:`unmix`). Each recovered source is a
target or a reference; the attacker links each request to the gallery by the better-matching
of its two sources. It needs only the scheme's form (two volumes, weights summing to 1), not
the range of ``a``.

The harness scores, against the number of requests observed: the share of the reference pool
recovered (a source that is closer to this reference than to any other reference or test scan,
at MS-SSIM >= 0.9), the MS-SSIM of the better of each
request's two sources against its target, and the linkage top-1 of the requests (with the ROC
statistics of :mod:`privbench.roc`); beside the mixture as the guess and the public mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privbench import roc
from privbench.attacks import linkage as linkage_attack
from privbench.attacks.base import Attack, AttackResult, Client, Gallery, Observation, Truth, Victims
from privbench.config import RunConfig, require
from privbench.metrics import ms_ssim3d
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS

RECOVERED = 0.9  # MS-SSIM at which a reference counts as recovered


@dataclass
class ReferenceRecoveryConfig:
    """Unmix many requests of one client by their shared references."""

    requests: int = 200  # requests the server observes (the test scans in turn, fresh keys each time)
    curve: tuple[int, ...] = (25, 50, 100)  # also attack the first n requests observed, for each n
    trials: int = 5000  # random subsets of requests tried per round in search of hyperplanes
    rounds: int = 4  # later rounds sample around the requests already explained
    rank_tolerance: float = 1e-4  # singular values below this share of the largest are zero

    PRESETS = {"test": {"requests": 12, "curve": (6,), "trials": 400}}

    def validate(self, run: RunConfig) -> None:
        require((self.requests >= 2 and self.trials >= 1 and self.rounds >= 1,
                 "attack.reference_recovery.requests must be >= 2, trials and rounds >= 1"),
                (all(2 <= n < self.requests for n in self.curve),
                 "attack.reference_recovery.curve must hold request counts in [2, requests)"),
                (0 < self.rank_tolerance < 1, "attack.reference_recovery.rank_tolerance must be in (0, 1)"))


@dataclass
class Unmixing:
    """A fit of N mixtures: ``sources [C, ...]``, and for request i the sources ``pairs[i]`` and
    the weight ``weights[i]`` of the first; ``residual`` is the share of the requests' energy
    the fit leaves unexplained (1 where no structure was found and each request is its own source)."""

    sources: torch.Tensor
    pairs: np.ndarray
    weights: np.ndarray
    residual: float
    rank: int
    curve: dict[int, "Unmixing"] = field(default_factory=dict)


def unmix(mixtures: torch.Tensor, *, trials: int, rounds: int, rank_tolerance: float, seed: int) -> Unmixing:
    """Sources and 2-sparse codes of mixtures ``[N, ...]`` (see the module).

    In the space the requests span (dimension C, the number of distinct volumes), the requests
    that do not contain volume c span a hyperplane, and no other hyperplane holds as many of
    them. Random subsets of requests whose span is exactly a hyperplane find these; each gives,
    for every request, its coefficient on c (zero on the hyperplane). Later rounds sample from
    the requests already explained by two volumes plus a few unexplained ones, which finds the
    volumes used most often. The codes are scaled so that each request's two weights sum to 1,
    and the sources solved by least squares."""
    shape, n = mixtures.shape[1:], len(mixtures)
    flat = mixtures.reshape(n, -1).double()
    energy, u = torch.linalg.eigh(flat @ flat.T)  # the Gram matrix's eigenvalues are the squared singular values
    energy, u = energy.flip(0).clamp(min=0).numpy(), u.flip(1).numpy()
    s = np.sqrt(energy)
    rank = max(2, min(int((s > rank_tolerance * s[0]).sum()), n - 1))
    coords = u[:, :rank] * s[:rank]  # the requests in the space they span
    vt = (torch.from_numpy(u[:, :rank] / s[:rank]).T @ flat).numpy()  # the space's orthonormal axes, in voxels
    rng = np.random.default_rng(seed)
    planes: dict[bytes, tuple[int, np.ndarray]] = {}
    explained = np.zeros(n, bool)
    for round_ in range(rounds):
        base, rest = np.flatnonzero(explained), np.flatnonzero(~explained)
        if not len(rest):
            break
        if round_ == 0:  # as few requests as span a hyperplane: the likeliest to miss a volume
            low = high = rank - 1
        else:
            low, high = 1, min(len(rest), 2 * (rank - _count(planes, n, rank)) + 2)
        for _ in range(trials):
            extra = rng.choice(rest, int(rng.integers(low, high + 1)), replace=False)
            _add_plane(planes, coords, np.concatenate([base, extra]), rank)
        codes = _codes(coords, planes, rank)
        explained = (codes != 0).sum(0) == 2
    codes = _codes(coords, planes, rank)
    if len(codes) < 2:  # no structure found: each request stands for itself, nothing explained
        return Unmixing(mixtures.float().clone(), np.repeat(np.arange(n)[:, None], 2, 1), np.ones(n), 1.0, rank)
    scale = np.linalg.lstsq(codes.T, np.ones(n), rcond=None)[0]  # each request's weights sum to 1
    codes = scale[:, None] * codes
    sources = np.linalg.lstsq(codes.T, coords, rcond=None)[0]
    residual = float(((coords - codes.T @ sources) ** 2).sum() / max((coords ** 2).sum(), 1e-300))
    top2 = np.argsort(-np.abs(codes), axis=0, kind="stable")[:2].T  # each request's two sources
    volumes = torch.from_numpy(sources @ vt[:rank]).float().reshape(len(sources), *shape)
    return Unmixing(volumes, top2, codes[top2[:, 0], np.arange(n)], residual, rank)


NULL = 1e-5  # a singular value below this share of the largest is zero (float32 requests: ~1e-7)
INLIER = 1e-5  # |<request, normal>| below this share of the request's norm: on the hyperplane


def _add_plane(planes: dict, coords: np.ndarray, picked: np.ndarray, rank: int) -> None:
    """Record the hyperplane that the ``picked`` requests span, if their span is one."""
    _, singular, vt = np.linalg.svd(coords[picked])
    singular = np.concatenate([singular, np.zeros(max(0, rank - len(singular)))])
    if not (singular[-1] < NULL * singular[0] and singular[-2] > 10 * NULL * singular[0]):
        return  # the picked requests span more or less than a hyperplane
    normal = vt[-1]
    inside = np.abs(coords @ normal) < INLIER * np.linalg.norm(coords, axis=1)
    if inside.sum() >= rank:
        planes.setdefault(inside.tobytes(), (int(inside.sum()), normal))


def _select(planes: dict, n: int, rank: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One hyperplane per volume: the fullest first, each kept only if no request then lies off
    more than two kept hyperplanes (a request holds two volumes). A hyperplane that misses two
    volumes (the requests missing both, plus a stray one) holds fewer requests than either
    volume's own, so it comes later and is refused."""
    found = sorted(((np.frombuffer(key, dtype=bool), normal) for key, (_, normal) in planes.items()),
                   key=lambda item: -int(item[0].sum()))
    off, kept = np.zeros(n, int), []
    for inside, normal in found:
        if len(kept) == rank:
            break
        if (off + ~inside).max() <= 2:
            kept.append((inside, normal))
            off += ~inside
    return kept


def _count(planes: dict, n: int, rank: int) -> int:
    return len(_select(planes, n, rank))


def _codes(coords: np.ndarray, planes: dict, rank: int) -> np.ndarray:
    """Unscaled codes ``[S, N]``: each selected hyperplane's coefficients (zero on it)."""
    ordered = _select(planes, len(coords), rank)
    if not ordered:
        return np.zeros((0, len(coords)))
    return np.stack([np.where(inside, 0.0, coords @ normal) for inside, normal in ordered])


@register_attack("reference-recovery", description="Unmix many requests of one client at once through "
                 "the references they share (references recovered, target MS-SSIM and linkage against requests seen)",
                 paper="Carlini et al., arXiv 2011.05315 (InstaHide), on Kim et al., IPMI 2023",
                 requires=(REPEATED_SCANS, PUBLIC_POOL), config=ReferenceRecoveryConfig)
class ReferenceRecovery(Attack):
    """Recover the client's references and the targets from many requests over time."""

    name = "reference-recovery"
    headline = "linkage_top1"
    identifies = "linkage_top1"
    recovers = "msssim"
    naive = {"recovery": {"mixture as guess": "mixture_msssim"},
             "identity": {"mixture as guess": "mixture_linkage_top1"}}
    applies_to = ("mixup",)
    grants = ("gallery",)
    observes = ("attack.reference_recovery.requests requests of the test scans (fresh keys each); "
                "a gallery of clean scans and the public mean")

    def victims(self, client: Client, config: ReferenceRecoveryConfig) -> Victims:
        """The test scans sent in turn, ``requests`` times in all, each with a fresh key; the
        truth keeps each request's reference index and the reference pool's images."""
        scans = client.task.scans("test")
        images = [client.task.load(scan)[0][None] for scan in scans]
        requests, subjects, sessions, targets, weights, references = [], [], [], [], [], []
        for i in range(config.requests):
            key = client.new_key()
            requests.append(client.defense.encode(images[i % len(scans)], key))
            subjects.append(scans[i % len(scans)].subject)
            sessions.append(scans[i % len(scans)].session)
            targets.append(images[i % len(scans)])
            weights.append(key.a)
            references.append(key.indices[0])
        pool = client.task.scans("reference")
        truth = Truth(subjects, sessions, targets, weights, {"reference": references},
                      {"pool": torch.stack([client.task.load(scan)[0] for scan in pool])})
        return Victims(requests, truth)

    def reconstruct(self, observation: Observation) -> Unmixing:
        """Unmix all the requests, and the first n of them for each n of the curve."""
        config = observation.config
        mixtures = torch.cat([request[:1] for request in observation.requests])[:, 0]
        fit = lambda m: unmix(m, trials=config.trials, rounds=config.rounds,  # noqa: E731
                              rank_tolerance=config.rank_tolerance, seed=observation.seed)
        result = fit(mixtures)
        result.curve = {n: fit(mixtures[:n]) for n in config.curve}
        return result

    def score(self, guesses: Unmixing, truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        gallery = observation.gallery
        mixtures = torch.cat([request[:1] for request in observation.requests]).float()
        rows = [self._row(fit, n, truth, gallery) for n, fit in
                sorted({**guesses.curve, len(mixtures): guesses}.items())]
        full = rows[-1]
        targets = torch.cat(truth.images)
        mixture = float(_msssim(mixtures, targets).mean())
        template = float(_msssim(gallery.mean.expand_as(targets[:, 0])[:, None], targets).mean())
        by_mixture = linkage_attack.similarities(mixtures, gallery, msssim=False)["correlation"]
        plain = linkage_attack.rank({"c": by_mixture}, truth.subjects, truth.sessions, gallery)["c"]
        low_fpr = roc.report({name: linkage_attack.identity_scores(s, truth.subjects, truth.sessions, gallery)
                              for name, s in (("recovered", full["scores"]), ("mixture", by_mixture))},
                             run_dir, self.name, f"reference-recovery from {len(mixtures)} requests")
        table = [{"guess": f"recovered from {r['requests']} requests", **{k: v for k, v in r.items() if k != "scores"}}
                 for r in rows]
        table += [{"guess": "mixture as guess", "msssim": mixture, "linkage_top1": plain["top1"]},
                  {"guess": "public mean as guess", "msssim": template},
                  {"guess": "chance", "linkage_top1": plain["chance_top1"]}]
        metrics = {"references_recovered": full["references_recovered"], "msssim": full["msssim"],
                   "linkage_top1": full["linkage_top1"], "mixture_msssim": mixture, "template_msssim": template,
                   "mixture_linkage_top1": plain["top1"], "chance_top1": plain["chance_top1"],
                   **roc.headline(low_fpr["recovered"])}
        settings = {"requests": len(mixtures), "reference_pool": len(truth.shared["pool"]),
                    "references_used": len(set(truth.extra["reference"])), "rank": guesses.rank,
                    "residual": guesses.residual, "recovered_at_msssim": RECOVERED}
        return AttackResult(metrics, self.name, table, roc.files(self.name), settings)

    def _row(self, fit: Unmixing, n: int, truth: Truth, gallery: Gallery) -> dict[str, Any]:
        """Scores of the fit of the first ``n`` requests, and their gallery scores (the better
        of each request's two sources, by residual correlation)."""
        sources = fit.sources[:, None].clamp(0, 1)
        pool, targets = truth.shared["pool"], torch.cat(truth.images[:n])
        scans = {(s, t): image for s, t, image in zip(truth.subjects, truth.sessions, truth.images)}
        volumes = torch.cat([pool, *scans.values()])  # every reference and every test scan
        nearest = _corr(sources, volumes).argmax(1).numpy()  # the volume each source is
        found = [max((float(_msssim(sources[j:j + 1], pool[k:k + 1])) for j in np.flatnonzero(nearest == k)), default=0.0)
                 for k in range(len(pool))]
        first, second = sources[fit.pairs[:, 0]], sources[fit.pairs[:, 1]]
        recovered = torch.maximum(_msssim(first, targets), _msssim(second, targets))
        per_source = linkage_attack.similarities(sources, gallery, msssim=False)["correlation"]
        scores = torch.maximum(per_source[fit.pairs[:, 0]], per_source[fit.pairs[:, 1]])  # the better source's
        linked = linkage_attack.rank({"c": scores}, truth.subjects[:n], truth.sessions[:n], gallery)["c"]
        return {"requests": n, "rank": fit.rank, "residual": fit.residual,
                "references_recovered": sum(f >= RECOVERED for f in found) / len(found),
                "msssim": float(recovered.mean()), "linkage_top1": linked["top1"], "scores": scores}


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``[A, B]`` of two stacks of volumes."""
    x, y = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)) @ (y / y.norm(dim=1, keepdim=True).clamp(min=1e-12)).T


def _msssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of matching volumes ``[N,1,D,H,W]`` (clamped to the image range)."""
    return ms_ssim3d(x.float().clamp(0, 1), y.float(), data_range=1.0).reshape(-1)
