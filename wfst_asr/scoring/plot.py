"""Pictures of alignments (``wfst-asr align --plot``): per utterance, the features as a
spectrogram, the model's frame posteriors, and the reference and hypothesis segmentations one
above the other on the same time axis (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = ["plot_alignment"]

Segment = tuple[float, float, str]


def _tier(ax, segs: Sequence[Segment], name: str, color: str) -> None:
    ax.set_yticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center")
    for s, e, lab in segs:
        ax.axvline(s, color=color, lw=0.8)
        ax.text((s + e) / 2, 0.5, lab, ha="center", va="center", fontsize=7, clip_on=True)
    if segs:
        ax.axvline(segs[-1][1], color=color, lw=0.8)


def plot_alignment(path: str | os.PathLike, features: torch.Tensor, frame_shift: float,
                   posteriors: torch.Tensor | None, output_shift: float,
                   ref: Sequence[Segment] | None, hyp: Sequence[Segment], title: str = "") -> None:
    """Write a PNG: ``features`` ``[T, F]`` (frames ``frame_shift`` s apart), ``posteriors``
    ``[T', V]`` log-probs (frames ``output_shift`` s apart; None: left out), the ``ref`` and
    ``hyp`` segmentations (seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [3, 2] if posteriors is not None else [3]
    rows += [0.5, 0.5] if ref is not None else [0.5]
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.2 * sum(rows) + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": rows})
    dur = features.shape[0] * frame_shift
    ax = axes[0]
    ax.imshow(features.T.cpu().numpy(), origin="lower", aspect="auto",
              extent=(0, dur, 0, features.shape[1]), cmap="magma")
    ax.set_ylabel("features")
    ax.set_title(title)
    i = 1
    if posteriors is not None:
        p = posteriors.detach().float().exp().T.cpu().numpy()
        axes[i].imshow(p, origin="lower", aspect="auto", cmap="Greys",
                       extent=(0, posteriors.shape[0] * output_shift, 0, p.shape[0]))
        axes[i].set_ylabel("posteriors")
        i += 1
    if ref is not None:
        _tier(axes[i], ref, "reference", "tab:blue")
        i += 1
    _tier(axes[i], hyp, "hypothesis", "tab:red")
    axes[i].set_xlabel("time (s)")
    axes[i].set_xlim(0, dur)
    fig.tight_layout()
    tmp = f"{os.fspath(path)}.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
