"""Mixup-Privacy's figures: the Dice-versus-K curve (Fig. 3), the mixing and unmixing of
one patch (Fig. 2) and the utility-privacy curve over the mixing weight."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from privbench.figures import central_patch, colour, plt
from privbench.mixing import mix, one_hot


def tta_curve(table: pd.DataFrame, classes: tuple[str, ...]) -> plt.Figure:
    """Dice versus the number of TTA references K, per unmixing (the paper's Fig. 3): the
    mean over classes bold, each class thin."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, unmix in zip(axes, ("naive", "learned")):
        rows = table[table.unmix == unmix]
        for name in classes:
            ax.plot(rows.k, rows[name], lw=1, alpha=0.7, label=name)
        ax.plot(rows.k, rows["mean"], lw=2.5, color="k", label="mean")
        ax.set(title=f"{unmix} unmixing", xlabel="K (references averaged)", ylabel="test Dice")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def mixup_examples(image: torch.Tensor, label: torch.Tensor, key: Any, mixed: torch.Tensor,
                   unmixed: dict[str, torch.Tensor], num_classes: int, rows: int = 3) -> plt.Figure:
    """The paper's Fig. 2 for one test patch: per reference (row), the target, reference,
    mixture, mixed ground truth, server prediction, naive and learned unmixing, the TTA means
    of the references up to that row, and the target's ground truth. Inputs are whole volumes; an axial slice through
    the centre of a central patch is drawn."""
    rows = min(rows, len(key))
    window = central_patch(label.shape)
    cut = lambda t: torch.rot90(t[(..., *window)], 1, dims=(-2, -1))  # noqa: E731
    y, y_ref = one_hot(label[None], num_classes), one_hot(key.ref_label[:rows], num_classes)
    x_mix = mix(image[None].expand(rows, *image.shape), key.ref_image[:rows], key.a)
    columns = ["target", "reference", "mixture", "mixed truth", "server output",
               "naive", "learned", "naive TTA mean", "learned TTA mean", "target truth"]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.7 * len(columns), 1.8 * rows), squeeze=False)
    for r in range(rows):
        panels = [cut(image[0]), cut(key.ref_image[r, 0]), cut(x_mix[r, 0]),
                  colour(cut(mix(y, y_ref[r:r + 1], key.a)[0])), colour(cut(mixed[r])),
                  colour(cut(unmixed["naive"][r])), colour(cut(unmixed["learned"][r])),
                  colour(cut(unmixed["naive"][: r + 1].mean(0))),
                  colour(cut(unmixed["learned"][: r + 1].mean(0))), colour(cut(y[0]))]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            gray = isinstance(panel, torch.Tensor)
            ax.imshow(panel.numpy() if gray else panel, cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(f"ref {r + 1}", fontsize=8)
    fig.suptitle(f"Mixup-Privacy, a = {key.a:.2f} (TTA means over references 1..row)", fontsize=9)
    fig.tight_layout()
    return fig


def utility_privacy_curve(table: pd.DataFrame, headlines: dict[str, str]) -> plt.Figure:
    """Dice against each attack's headline number, one point per mixing weight a (labelled);
    without attacks, Dice against a."""
    panels = list(headlines.items()) or [("a", "mixing weight a")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (column, name) in zip(axes[0], panels):
        for variant, style in (("learned+tta", "o-"), ("naive+tta", "s--"), ("learned", "^:")):
            ax.plot(table[column], table[f"dice_{variant}"], style, label=variant, alpha=0.9)
        for _, row in table.iterrows():
            ax.annotate(f"a={row.a:g}", (row[column], row["dice_learned+tta"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel=column if column == "a" else f"{name}: {column.removeprefix(name + '_')}",
               ylabel="test Dice (mean over classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
