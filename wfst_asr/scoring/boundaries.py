"""Boundary accuracy of alignments: the share of reference boundaries that a hypothesis
alignment places within a tolerance (Tang et al. 2016, Table 8: 10 / 20 / 30 / 40 ms).

An alignment is a list of segments ``(start, end, label)`` in seconds, in time order; its
*boundaries* are the ends of all segments but the last (the times between two segments; the
utterance's start and end are no boundaries). Reference boundaries are paired with hypothesis
boundaries by position when both alignments have the same number of segments (a forced
alignment of the reference labels), else each reference boundary with the nearest hypothesis
boundary (counted in ``unpaired``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BoundaryReport", "alignment_boundaries", "boundary_accuracy"]

Segment = tuple[float, float, str]
DEFAULT_TOLERANCES = (0.010, 0.020, 0.030, 0.040)


def alignment_boundaries(segments: Sequence[Segment]) -> list[float]:
    """The boundary times of an alignment (the ends of all segments but the last)."""
    return [float(end) for _start, end, _label in list(segments)[:-1]]


@dataclass
class BoundaryReport:
    """Counts of :func:`boundary_accuracy`: ``hits[i]`` reference boundaries within
    ``tolerances[i]`` seconds, out of ``total``."""

    tolerances: tuple[float, ...]
    hits: list[int]
    total: int
    utterances: int
    unpaired: int = 0
    missing: list[str] = field(default_factory=list)

    def percent(self) -> list[float]:
        return [100.0 * h / self.total if self.total else 0.0 for h in self.hits]

    def summary(self) -> str:
        """One line: ``10 ms 64.5%  20 ms 86.8% ... (N boundaries, U utterances)``."""
        parts = [f"{1000 * t:g} ms {p:.1f}%" for t, p in zip(self.tolerances, self.percent())]
        extra = f", {self.unpaired} paired by nearest" if self.unpaired else ""
        extra += f", {len(self.missing)} without a hypothesis" if self.missing else ""
        return "  ".join(parts) + f" ({self.total} boundaries, {self.utterances} utterances" \
            f"{extra})"


def boundary_accuracy(refs: Mapping[str, Sequence[Segment]],
                      hyps: Mapping[str, Sequence[Segment]],
                      tolerances: Sequence[float] = DEFAULT_TOLERANCES) -> BoundaryReport:
    """Boundary accuracy of ``hyps`` against ``refs`` (utterance -> alignment, see the module
    docstring). An utterance of ``refs`` without a hypothesis counts its boundaries as misses
    (listed in ``missing``)."""
    tols = tuple(float(t) for t in tolerances)
    hits = [0] * len(tols)
    total = unpaired = 0
    missing: list[str] = []
    for utt, ref in refs.items():
        rb = alignment_boundaries(ref)
        total += len(rb)
        hyp = hyps.get(utt)
        if not hyp:
            missing.append(utt)
            continue
        hb = alignment_boundaries(hyp)
        if len(hyp) == len(ref):
            diffs = [abs(r - h) for r, h in zip(rb, hb)]
        else:
            unpaired += 1
            diffs = [min((abs(r - h) for h in hb), default=float("inf")) for r in rb]
        for i, t in enumerate(tols):
            hits[i] += sum(d <= t + 1e-9 for d in diffs)
    return BoundaryReport(tols, hits, total, len(refs), unpaired, missing)
