"""Figures of a run (matplotlib, off-screen), written atomically into the run folder.

Segmentations are drawn as colour mixtures: each class has a colour and a voxel shows the
probability-weighted mix, so one-hot labels, mixed labels and soft predictions share one look.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from privbench import io  # noqa: E402
from privbench.mixing import one_hot  # noqa: E402

CLASS_COLOURS = np.array([[0, 0, 0], [0.2, 0.6, 1.0], [1.0, 0.55, 0.1], [0.95, 0.95, 0.95],
                          [0.3, 0.85, 0.3], [0.85, 0.2, 0.3]])


def save_atomic(fig: plt.Figure, path: Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG atomically (:func:`privbench.io.atomic_path`), then close it."""
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def colour(probs: torch.Tensor) -> np.ndarray:
    """Class probabilities ``[C,H,W]`` -> RGB ``[H,W,3]``."""
    return np.einsum("chw,cr->hwr", probs.float().numpy(), CLASS_COLOURS[: probs.shape[0]]).clip(0, 1)


def protocol_example(image: torch.Tensor, proxy: torch.Tensor, output: torch.Tensor, probs: torch.Tensor,
                     label: torch.Tensor, title: str) -> plt.Figure:
    """One request through a defense: the scan ``[1,D,H,W]``, what the server receives
    ``[1,1,D,H,W]``, what it returns and the client's decoded segmentation ``[1,C,D,H,W]``, and the
    truth ``[D,H,W]`` (central axial slices)."""
    cut = lambda t: torch.rot90(t[..., t.shape[-1] // 2], 1, dims=(-2, -1))  # noqa: E731
    panels = [("scan", cut(image[0])), ("sent to the server", cut(proxy[0, 0]).clamp(0, 1)),
              ("server's answer", colour(cut(output[0]))), ("client's segmentation", colour(cut(probs[0]))),
              ("truth", colour(cut(one_hot(label[None], probs.shape[1])[0])))]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (name, panel) in zip(axes, panels):
        gray = isinstance(panel, torch.Tensor)
        ax.imshow(panel.numpy() if gray else panel, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{title}: one request", fontsize=9)
    fig.tight_layout()
    return fig


def central_patch(shape: torch.Size, size: int = 64) -> tuple[slice, slice, int]:
    """A centred square window of the first two axes, and the middle index of the third."""
    d, h, w = shape[-3:]
    half_d, half_h = min(size, d) // 2, min(size, h) // 2
    return slice(d // 2 - half_d, d // 2 + half_d), slice(h // 2 - half_h, h // 2 + half_h), w // 2


def similarity_heatmap(sim: torch.Tensor, subjects: list[str], title: str) -> plt.Figure:
    """All-pairs similarity of the attacker's observations, rows and columns grouped by subject
    (a block diagonal means the subjects are re-identifiable)."""
    order = sorted(range(len(subjects)), key=lambda i: subjects[i])
    fig, ax = plt.subplots(figsize=(6, 5.2))
    shown = ax.imshow(sim[order][:, order].numpy(), cmap="viridis")
    ticks = [subjects[i] for i in order]
    ax.set_xticks(range(len(order)), ticks, rotation=90, fontsize=6)
    ax.set_yticks(range(len(order)), ticks, fontsize=6)
    ax.set_title(f"MS-SSIM between requests ({title})", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def separation_examples(target: torch.Tensor, reference: torch.Tensor, mixture: torch.Tensor,
                        inits: list[tuple[torch.Tensor, torch.Tensor]], a: float) -> plt.Figure:
    """The paper's Fig. 4 for one patch ``[1,p,p,p]``: target, reference and mixture, then the two
    sources recovered from each random initialisation (central axial slices)."""
    middle = lambda t: torch.rot90(t[0, :, :, t.shape[-1] // 2], 1).numpy()  # noqa: E731
    panels = [("target", target), ("reference", reference), (f"mixture (a = {a:.2f})", mixture)]
    panels += [(f"init {i + 1}: source {j + 1}", s) for i, pair in enumerate(inits) for j, s in enumerate(pair)]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.8 * len(panels), 2.1), squeeze=False)
    for ax, (title, volume) in zip(axes[0], panels):
        ax.imshow(middle(volume), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def tta_average_curve(table: pd.DataFrame) -> plt.Figure:
    """The tta-average attack against K: MS-SSIM of the recovered targets and their linkage
    rate, beside the oracle that knows a, one mixture as the guess, the template and chance."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(table.k, table.msssim, "o-", lw=2, color="C3", label="recovered (a estimated)")
    left.plot(table.k, table.oracle_a_msssim, "s--", color="C2", label="recovered with the true a")
    left.axhline(table.mixture_msssim.iloc[0], color="C0", ls=":", label="one mixture as guess")
    left.axhline(table.template_msssim.iloc[0], color="k", ls=":", label="public mean as guess")
    left.set(xlabel="K (mixtures in one request)", ylabel="MS-SSIM to the target", xscale="log")
    right.plot(table.k, table.linkage_top1, "o-", lw=2, color="C3", label="recovered (a estimated)")
    right.plot(table.k, table.oracle_a_linkage_top1, "s--", color="C2", label="recovered with the true a")
    right.axhline(table.mixture_linkage_top1.iloc[0], color="C0", ls=":", label="one mixture")
    right.axhline(table.chance_top1.iloc[0], color="k", ls=":", label="chance")
    right.set(xlabel="K (mixtures in one request)", ylabel="top-1 linkage", xscale="log", ylim=(-0.02, 1.02))
    for ax in (left, right):
        ax.set_xticks(list(table.k), [str(k) for k in table.k])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
    """ROC curves of identity attacks on log-log axes, so the low-FPR regime an audit cares
    about is visible (FPR 0 is drawn at half the smallest non-zero FPR of all curves)."""
    nonzero = [f[f > 0].min() for f, _ in curves.values() if (f > 0).any()]
    floor = min(nonzero, default=1e-3) / 2
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, (fpr, tpr) in curves.items():
        ax.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post", label=label)
    ax.plot([floor, 1], [floor, 1], "k:", lw=1, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1.05), ylim=(floor, 1.05),
           xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
