"""Per-frame labels from time alignments: a supervision's lhotse ``alignment`` (e.g. TIMIT's
hand-labelled ``.phn`` boundaries, or a forced alignment) turned into one label per feature
frame, the form the trainer reads reference segmentations in (``token_field``; the segmental
losses with ``loss.frame_targets``, frame cross-entropy) and boundary accuracy is scored from.

Frame ``i`` of a cut (``frame_shift`` seconds apart, from the cut's start) takes the label of
the alignment item that contains its centre ``(i + 0.5) * frame_shift`` (relative to the
supervision's start). Items whose symbol ``mapping`` sends to nothing (``None``: e.g. TIMIT's
``q`` in the 48-phone set) or does not know give their frames to the item before them (the
first item's to the one after it); frames before the first item or after the last take the
nearest item's label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FrameLabelError", "alignment_segments", "frame_labels"]


class FrameLabelError(ValueError):
    """A supervision whose alignment gives no labels (none, or every symbol dropped)."""


def alignment_segments(items: Sequence[Any], mapping: Mapping[str, str | None] | None = None,
                       offset: float = 0.0) -> tuple[list[tuple[float, float, str]], int]:
    """``(segments, dropped)``: the alignment as ``(start, end, label)`` in seconds, one per
    kept item, each running to the next kept item's start (the last to its own end, the first
    from the earliest item's start), so dropped items' time goes to the item before them.

    Args:
      items: alignment items with ``symbol``, ``start`` and ``duration`` (seconds; lhotse
        ``AlignmentItem``), in any order.
      mapping: symbol -> label (``None``: drop the item); None keeps the symbols.
      offset: added to every time (the supervision's start within its cut).

    Raises:
      FrameLabelError: no item is kept.
    """
    ordered = sorted(items, key=lambda x: float(x.start))
    kept: list[tuple[float, float, str]] = []
    dropped = 0
    for it in ordered:
        sym = str(it.symbol)
        label = sym if mapping is None else mapping.get(sym)
        if label is None:
            dropped += 1
            continue
        kept.append((float(it.start) + offset, float(it.start) + float(it.duration) + offset,
                     str(label)))
    if not kept:
        raise FrameLabelError(f"no labels in the alignment ({dropped} items, all dropped)"
                              if dropped else "an empty alignment")
    first = float(ordered[0].start) + offset
    out = []
    for i, (s, e, lab) in enumerate(kept):
        out.append((first if i == 0 else s, kept[i + 1][0] if i + 1 < len(kept) else e, lab))
    return out, dropped


def frame_labels(items: Sequence[Any], num_frames: int, frame_shift: float,
                 mapping: Mapping[str, str | None] | None = None, offset: float = 0.0
                 ) -> tuple[list[str], int]:
    """``(labels, dropped)``: one label per frame (the :func:`alignment_segments` segment
    containing the frame's centre; frames outside them take the nearest one's), and how many
    items were dropped. ``num_frames``: frames of the cut's features, ``frame_shift`` seconds
    apart."""
    segs, dropped = alignment_segments(items, mapping, offset)
    out: list[str] = []
    j = 0
    for i in range(num_frames):
        centre = (i + 0.5) * frame_shift
        while j + 1 < len(segs) and segs[j + 1][0] <= centre:
            j += 1
        out.append(segs[j][2])
    return out, dropped
