"""How much a defense's encoding changes a scan, and the verdict on a run whose requests are
the scans.

An encoding defense can train itself into the identity: a Deformation-Proxy whose field shrank
to nothing, an encoder that passes its input through. Such a run offers no privacy whatever its
other numbers say, so every run measures, on the test scans with keys from its own stream,
the MS-SSIM between each request and its scan, plus what the defense measures of its own
encoding (:meth:`~privbench.defenses.base.Defense.encoding_measures`, e.g. the displacement of
a deformation). A defense that promises an encoding (``Defense.encodes``) whose requests are at
least :data:`COLLAPSED_AT` similar to their scans on average is **collapsed**.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from privbench import streams
from privbench.metrics import ms_ssim3d

COLLAPSED_AT = 0.99  # mean request-to-scan MS-SSIM from which an encoding counts as the identity
NO_ENCODING, ENCODES, COLLAPSED = "no encoding", "encodes", "collapsed"


def measure(defense: Any, images: Iterable[torch.Tensor], generator: torch.Generator) -> dict[str, float]:
    """Mean over ``images`` (``[1,D,H,W]`` each) of the request-to-scan MS-SSIM (every request of
    a key that sends several, e.g. mixup's K mixtures) and of the defense's own measures, each
    request encoded with a fresh key from ``generator``; also the largest MS-SSIM. The images
    are taken one at a time, so a generator of loaded scans never holds them all."""
    similarity, own = [], []
    for image in images:
        key = defense.new_key(generator)
        requests = defense.encode(image[None], key)
        similarity.append(float(ms_ssim3d(requests.float(), image[None].expand_as(requests).float()).mean()))
        own.append(defense.encoding_measures(image[None], key))
    out = {"request_msssim": float(np.mean(similarity)), "request_msssim_max": float(np.max(similarity)),
           "scans": len(similarity)}
    return out | {name: float(np.mean([row[name] for row in own])) for name in own[0]}


def verdict(encodes: bool, request_msssim: float) -> str:
    """``no encoding`` for a defense that sends the scan as it is (``none``), ``collapsed`` for
    one that promises an encoding whose requests are nearly the scans, else ``encodes``."""
    if not encodes:
        return NO_ENCODING
    return COLLAPSED if request_msssim >= COLLAPSED_AT else ENCODES


def section(defense: Any, images: Iterable[torch.Tensor], seed: int) -> tuple[dict[str, Any], str]:
    """The card's ``encoding`` section for a trained defense (keys from the run's ``encoding``
    stream, so nothing else draws from it) and its summary line."""
    found = measure(defense, images, streams.generator(seed, "encoding"))
    state = verdict(getattr(defense, "encodes", True), found["request_msssim"])
    out = {**found, "collapsed_at": COLLAPSED_AT, "verdict": state}
    own = ", ".join(f"{name} {value:.3g}" for name, value in found.items()
                    if not name.startswith("request_") and name != "scans")
    line = f"encoding: request-to-scan MS-SSIM {found['request_msssim']:.3f}" + (f", {own}" if own else "")
    if state == COLLAPSED:
        line += (f" -> COLLAPSED: the requests are nearly the scans (>= {COLLAPSED_AT}); this run "
                 "hides nothing, whatever its attack numbers say")
    return out, line + f" ({state})" * (state != COLLAPSED)


def of_card(sections: dict[str, Any]) -> str | None:
    """A card's verdict (None for cards written before it was measured)."""
    encoding = sections.get("encoding") if isinstance(sections, dict) else None
    return encoding.get("verdict") if isinstance(encoding, dict) else None
