"""``inversion``: undo a trained encoding with the weights the server holds (white-box).

Threat model: in the Privacy-Net and Deformation-Proxy protocols the client's encoder (or field
generator) is trained together with the server's network, so the server holds its weights. The
attacker gets a copy (grant ``weights``: it applies the encoding with keys it draws itself, never
the victims'), the public pool and a clean gallery. Adversarially trained encodings hide identity
from the adversary they were trained against, not from one trained afterwards (Elazar & Goldberg
2018; inversion decoders: Xiao et al. AAAI 2020, Yang et al. CCS 2019). Two attacks:

- **decode**: train a decoder (a 3D U-Net) on public scans to map their encodings back,
  ``D(E(x)) -> x`` (L1 on aligned patches; deformation: each public scan under several fresh
  keys), decode every request and link it to the clean gallery by residual correlation.
- **match**: pass the gallery itself through the encoding (Privacy-Net's encoder has no key;
  Deformation-Proxy's gallery scans are averaged over fresh keys) and link each request to the
  encoded gallery by residual correlation after removing the encoded public mean.

The harness scores the MS-SSIM of the decoded scans against the targets (beside the request and
the public mean as guesses), the linkage of both attacks and of the plain ``linkage`` attack
(requests against the clean gallery), with the ROC statistics of the stronger one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privbench import engine, roc
from privbench.attacks import learned
from privbench.attacks import linkage as linkage_attack
from privbench.attacks.base import Attack, AttackResult, Gallery, Observation, Truth
from privbench.attacks.learned import AlignedPatches
from privbench.config import EvalConfig, RunConfig, require
from privbench.errors import PrivbenchError
from privbench.metrics import ms_ssim3d, residual_correlation
from privbench.nets import EncoderNet
from privbench.registry import register_attack
from privbench.tasks.base import PUBLIC_POOL, REPEATED_SCANS

CHECKPOINT = "inversion_decoder.pt"


@dataclass
class InversionConfig:
    """Invert the trained encoding: a decoder trained on public scans, and the encoded gallery."""

    iterations: int = 300  # decoder training on the public pool's patches
    batch_size: int = 4
    lr: float = 1e-3  # Adam
    features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)  # the decoder U-Net's widths
    keys: int = 4  # fresh keys per public and gallery scan where the encoding has a key

    PRESETS = {"test": {"iterations": 3, "features": (4, 4, 8, 8, 16, 4), "keys": 2},
               "paper": {"iterations": 20_000, "features": (32, 32, 64, 128, 256, 32)}}

    def validate(self, run: RunConfig) -> None:
        require((self.iterations >= 0 and self.batch_size >= 1 and 0 < self.lr <= 1 and self.keys >= 1,
                 "attack.inversion.iterations must be >= 0, batch_size and keys >= 1, lr in (0, 1]"),
                (len(self.features) == 6 and all(f >= 1 for f in self.features),
                 "attack.inversion.features must be six positive widths"))


@register_attack("inversion", description="White-box: a decoder trained on public scans through the "
                 "server's copy of the encoder, and the gallery passed through it (recovery MS-SSIM, linkage)",
                 paper="Xiao et al., AAAI 2020; Elazar & Goldberg, EMNLP 2018",
                 requires=(REPEATED_SCANS, PUBLIC_POOL), config=InversionConfig)
class Inversion(Attack):
    """Undo Privacy-Net's encoder or Deformation-Proxy's deformation with their trained weights."""

    name = "inversion"
    headline = "top1"
    identifies = "top1"
    recovers = "msssim"
    naive = {"recovery": {"request as guess": "request_msssim"},
             "identity": {"requests vs the clean gallery": "plain_top1"}}
    applies_to = ("privacy-net", "deformation")
    grants = ("weights", "public_pool", "gallery")
    observes = ("every test scan's request; a copy of the trained encoder or field generator (white-box); "
                "the public pool; a gallery of clean scans")

    def reconstruct(self, observation: Observation) -> dict[str, Any]:
        """Decode every request, and score it against the clean and the encoded gallery."""
        config, run, box, gallery = observation.config, observation.runtime, observation.white_box, observation.gallery
        if box is None:
            raise PrivbenchError(f"inversion needs the encoding's weights; {observation.defense.name} has none")
        g = torch.Generator().manual_seed(observation.seed)
        keys = 1 if box.deterministic else config.keys
        public = observation.public.images()
        encoded = torch.cat([box.encode(public, g) for _ in range(keys)])
        decoder = learned.seeded(observation.seed, lambda: EncoderNet(config.features)).to(run.device)
        pairs = AlignedPatches(encoded, public.repeat(keys, 1, 1, 1, 1), run.patch_size, config.batch_size,
                               observation.seed)
        report = learned.fit(decoder, pairs, lambda out, batch: (out - batch.label).abs().mean(),
                             iterations=config.iterations, batch_size=config.batch_size, lr=config.lr,
                             features=config.features, run=run, name="inversion decoder", checkpoint=CHECKPOINT)
        requests = torch.cat([request[:1] for request in observation.requests]).float()
        decoder.eval()
        decoded = engine.sliding_window_predict(decoder, requests, run.patch_size, EvalConfig(), run.device,
                                                run.amp, softmax=False).clamp(0, 1).cpu()
        encoded_gallery = torch.stack([box.encode(gallery.images, g) for _ in range(keys)]).mean(0)
        encoded_mean = encoded.mean(0)[0]
        return {"decoded": decoded,
                "scores": {"decoded": residual_correlation(decoded, gallery.images, gallery.mean),
                           "matched": residual_correlation(requests, encoded_gallery, encoded_mean)},
                "settings": {"decoder_train_seconds": report.seconds, "decoder_iterations": report.iterations,
                             "keys_per_scan": keys, "public_scans": len(public)}}

    def score(self, guesses: dict[str, Any], truth: Truth, observation: Observation, run_dir: Path) -> AttackResult:
        gallery: Gallery = observation.gallery
        targets = torch.cat(truth.images)
        requests = torch.cat([request[:1] for request in observation.requests]).float()
        plain = linkage_attack.similarities(requests, gallery, msssim=False)["correlation"]
        scores = {**guesses["scores"], "plain": plain}
        linked = linkage_attack.rank(scores, truth.subjects, truth.sessions, gallery)
        low_fpr = roc.report({name: linkage_attack.identity_scores(s, truth.subjects, truth.sessions, gallery)
                              for name, s in scores.items()}, run_dir, self.name,
                             f"inversion of {observation.defense.name}")
        msssim = {"decoded": _msssim(guesses["decoded"], targets), "request": _msssim(requests, targets),
                  "public mean": _msssim(gallery.mean.expand_as(targets[:, 0])[:, None], targets)}
        best = max(("decoded", "matched"), key=lambda name: (linked[name]["top1"], linked[name]["map"]))
        rows = {"decoded": "decoded requests vs the clean gallery",
                "matched": "requests vs the gallery through the encoder",
                "plain": "requests vs the clean gallery (the linkage attack)"}
        table = [{"guess": label, **{k: linked[name][k] for k in ("top1", "top5", "map")},
                  **roc.headline(low_fpr[name]), **({"msssim": msssim[name]} if name in msssim else {})}
                 for name, label in rows.items()]
        table += [{"guess": "public mean as guess", "msssim": msssim["public mean"]},
                  {"guess": "chance", "top1": linked["plain"]["chance_top1"], "top5": linked["plain"]["chance_top5"],
                   "auc": 0.5}]
        metrics = {"top1": linked[best]["top1"], "map": linked[best]["map"], **roc.headline(low_fpr[best]),
                   "decoded_top1": linked["decoded"]["top1"], "matched_top1": linked["matched"]["top1"],
                   "plain_top1": linked["plain"]["top1"], "chance_top1": linked["plain"]["chance_top1"],
                   "msssim": msssim["decoded"], "request_msssim": msssim["request"],
                   "template_msssim": msssim["public mean"]}
        settings = {"stronger": best, **guesses["settings"],
                    "roc_pairs": {k: low_fpr[best][k] for k in ("n_positive", "n_negative")}}
        return AttackResult(metrics, self.name, table, roc.files(self.name), settings)


def _msssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(ms_ssim3d(x.float().clamp(0, 1), y.float(), data_range=1.0).mean())
