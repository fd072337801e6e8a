"""Edit distance, error counts and Kaldi-style scoring reports (PER / WER).

The Levenshtein alignment itself comes from kaldialign (unit costs, as Kaldi's
``compute-wer``); this module adds the bookkeeping around it:

* :class:`ErrorCounts`: insertions, deletions and substitutions against a reference length,
  summable, printed as ``%WER 12.34 [ 56 / 789, 1 ins, 2 del, 3 sub ]``;
* :func:`align_and_count` / :func:`align`: one pair of sequences;
* :func:`score`: a whole test set (utterance id -> tokens) with totals, a per-speaker
  breakdown and per-utterance alignments, as a :class:`ScoreReport` that writes a text report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import kaldialign

from ..atomic import atomic_write_text

__all__ = [
    "GAP",
    "ErrorCounts",
    "ScoreReport",
    "UttScore",
    "align",
    "align_and_count",
    "counts_from_alignment",
    "score",
]

#: How a gap (the missing side of an insertion or deletion) is printed in reports.
GAP = "***"

Alignment = list[tuple[str | None, str | None]]


@dataclass(frozen=True)
class ErrorCounts:
    """Errors of a hypothesis against a reference of ``ref_len`` tokens.

    ``metric`` (``"WER"``, ``"PER"``, ``"CER"``, ...) only names the rate when printed; it is
    not compared and ``a + b`` keeps the left one.
    """

    ref_len: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0
    metric: str = field(default="WER", compare=False)

    def __post_init__(self) -> None:
        for name in ("ref_len", "ins", "dels", "subs"):
            if getattr(self, name) < 0:
                raise ValueError(f"ErrorCounts.{name} must be >= 0, got {getattr(self, name)}")
        if self.dels + self.subs > self.ref_len:
            raise ValueError(
                f"{self.dels} deletions + {self.subs} substitutions exceed the reference "
                f"length {self.ref_len}"
            )

    @property
    def errors(self) -> int:
        """Insertions + deletions + substitutions."""
        return self.ins + self.dels + self.subs

    @property
    def corr(self) -> int:
        """Reference tokens matched exactly."""
        return self.ref_len - self.dels - self.subs

    @property
    def rate(self) -> float:
        """Error rate in percent: 100 * errors / ref_len (0 for no errors against an empty
        reference, ``inf`` for errors against an empty reference)."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.ref_len + other.ref_len,
            self.ins + other.ins,
            self.dels + other.dels,
            self.subs + other.subs,
            metric=self.metric,
        )

    def __radd__(self, other: object) -> ErrorCounts:
        # lets sum(counts) start from 0
        if other == 0:
            return self
        return NotImplemented

    def with_metric(self, metric: str) -> ErrorCounts:
        """The same counts printed as ``metric``."""
        return ErrorCounts(self.ref_len, self.ins, self.dels, self.subs, metric=metric)

    def format(self, metric: str | None = None) -> str:
        """``%WER 12.34 [ 56 / 789, 1 ins, 2 del, 3 sub ]`` (as Kaldi's compute-wer)."""
        return (
            f"%{metric or self.metric} {self.rate:.2f} [ {self.errors} / {self.ref_len}, "
            f"{self.ins} ins, {self.dels} del, {self.subs} sub ]"
        )

    def __str__(self) -> str:
        return self.format()


def _gap_symbol(ref: Sequence[str], hyp: Sequence[str]) -> str:
    """A string that is in neither sequence, to stand for epsilon in kaldialign."""
    used = set(ref) | set(hyp)
    eps = "\x00<eps>"
    while eps in used:
        eps += "\x00"
    return eps


def align(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Minimum edit-distance alignment of ``hyp`` against ``ref`` (unit costs).

    Returns ``(ref_token, hyp_token)`` pairs in order; ``None`` marks a gap: ``(r, None)`` is a
    deletion, ``(None, h)`` an insertion, ``(r, h)`` with ``r != h`` a substitution.
    """
    ref, hyp = list(ref), list(hyp)
    if not ref or not hyp:  # nothing to align: all deletions or all insertions
        return [(r, None) for r in ref] + [(None, h) for h in hyp]
    eps = _gap_symbol(ref, hyp)
    return [
        (None if r == eps else r, None if h == eps else h)
        for r, h in kaldialign.align(ref, hyp, eps)
    ]


def counts_from_alignment(alignment: Alignment, metric: str = "WER") -> ErrorCounts:
    """The :class:`ErrorCounts` of an alignment made by :func:`align`."""
    ref_len = ins = dels = subs = 0
    for r, h in alignment:
        if r is None:
            ins += 1
            continue
        ref_len += 1
        if h is None:
            dels += 1
        elif r != h:
            subs += 1
    return ErrorCounts(ref_len, ins, dels, subs, metric=metric)


def align_and_count(ref: Sequence[str], hyp: Sequence[str], metric: str = "WER") -> ErrorCounts:
    """Insertions, deletions and substitutions of ``hyp`` against ``ref`` (Levenshtein,
    unit costs, via kaldialign)."""
    ref, hyp = list(ref), list(hyp)
    if not ref or not hyp:
        return ErrorCounts(len(ref), len(hyp), len(ref), 0, metric=metric)
    ans = kaldialign.edit_distance(ref, hyp)
    return ErrorCounts(len(ref), ans["ins"], ans["del"], ans["sub"], metric=metric)


@dataclass(frozen=True)
class UttScore:
    """One utterance: its tokens, alignment and counts. ``missing``: it had no hypothesis
    (scored as all deletions)."""

    utt_id: str
    speaker: str | None
    ref: tuple[str, ...]
    hyp: tuple[str, ...]
    alignment: tuple[tuple[str | None, str | None], ...]
    counts: ErrorCounts
    missing: bool = False

    def alignment_lines(self) -> list[str]:
        """``<utt> ref|hyp|op ...`` and ``<utt> #csid c s i d`` lines (Kaldi's
        ``wer_per_utt_details`` style), columns padded to line up; ``***`` marks gaps and the
        ops are C(orrect), S(ubstitution), I(nsertion), D(eletion)."""
        refs, hyps, ops = [], [], []
        for r, h in self.alignment:
            r_s, h_s = GAP if r is None else r, GAP if h is None else h
            op = "I" if r is None else "D" if h is None else "C" if r == h else "S"
            width = max(len(r_s), len(h_s))
            refs.append(r_s.ljust(width))
            hyps.append(h_s.ljust(width))
            ops.append(op.ljust(width))
        c = self.counts
        tag = "  (no hypothesis)" if self.missing else ""
        return [
            f"{self.utt_id} ref  {' '.join(refs)}".rstrip(),
            f"{self.utt_id} hyp  {' '.join(hyps)}".rstrip(),
            f"{self.utt_id} op   {' '.join(ops)}".rstrip(),
            f"{self.utt_id} #csid {c.corr} {c.subs} {c.ins} {c.dels}{tag}",
        ]


@dataclass(frozen=True)
class ScoreReport:
    """The result of :func:`score`.

    ``speakers`` is sorted by speaker id (empty when no ``speaker_of`` was given),
    ``utterances`` by utterance id; ``missing`` lists (sorted) the utterances with no
    hypothesis, which are counted as all deletions in every total.
    """

    metric: str
    total: ErrorCounts
    speakers: dict[str, ErrorCounts]
    speaker_utts: dict[str, int]
    utterances: dict[str, UttScore]
    missing: list[str]

    @property
    def rate(self) -> float:
        """The overall error rate in percent."""
        return self.total.rate

    @property
    def num_utts(self) -> int:
        return len(self.utterances)

    @property
    def num_utts_with_errors(self) -> int:
        return sum(1 for u in self.utterances.values() if u.counts.errors > 0)

    @property
    def sentence_error_rate(self) -> float:
        """Percent of utterances with at least one error (Kaldi's %SER)."""
        return 100.0 * self.num_utts_with_errors / self.num_utts if self.num_utts else 0.0

    def summary(self) -> str:
        """One line: ``%PER 18.20 [ 91 / 500, 10 ins, 31 del, 50 sub ] 40 utts, 1 missing``."""
        return f"{self.total} {self.num_utts} utts, {len(self.missing)} missing"

    def to_text(self) -> str:
        """The report :meth:`write` writes."""
        m = self.metric
        lines = [
            str(self.total),
            (
                f"%SER {self.sentence_error_rate:.2f} "
                f"[ {self.num_utts_with_errors} / {self.num_utts} ]"
            ),
            (
                f"Scored {self.num_utts} utterances, {len(self.missing)} without a "
                "hypothesis (counted as deletions)."
            ),
        ]
        if self.missing:
            lines.append("Missing hypotheses: " + " ".join(self.missing))
        if self.speakers:
            lines += ["", "Per speaker:"]
            header = ("SPEAKER", "#UTT", "#REF", f"%{m}", "#ERR", "INS", "DEL", "SUB")
            rows = [
                (
                    spk,
                    str(self.speaker_utts[spk]),
                    str(c.ref_len),
                    f"{c.rate:.2f}",
                    str(c.errors),
                    str(c.ins),
                    str(c.dels),
                    str(c.subs),
                )
                for spk, c in self.speakers.items()
            ]
            t = self.total
            rows.append(
                (
                    "TOTAL",
                    str(self.num_utts),
                    str(t.ref_len),
                    f"{t.rate:.2f}",
                    str(t.errors),
                    str(t.ins),
                    str(t.dels),
                    str(t.subs),
                )
            )
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

            def fmt(row: tuple[str, ...]) -> str:
                first = row[0].ljust(widths[0])
                rest = "  ".join(x.rjust(w) for x, w in zip(row[1:], widths[1:]))
                return f"{first}  {rest}"

            lines.append(fmt(header))
            lines += [fmt(r) for r in rows]
        lines += ["", "Per utterance:"]
        for u in self.utterances.values():
            lines += u.alignment_lines()
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_text` to ``path`` atomically."""
        atomic_write_text(path, self.to_text())

    def to_dict(self) -> dict:
        """Totals and per-speaker counts as plain data (for JSON results files)."""

        def d(c: ErrorCounts) -> dict:
            return {
                "ref_len": c.ref_len,
                "ins": c.ins,
                "del": c.dels,
                "sub": c.subs,
                "errors": c.errors,
                "rate": c.rate,
            }

        return {
            "metric": self.metric,
            "total": d(self.total),
            "num_utts": self.num_utts,
            "sentence_error_rate": self.sentence_error_rate,
            "missing": list(self.missing),
            "speakers": {s: d(c) for s, c in self.speakers.items()},
        }


def _name_some(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def score(
    refs: Mapping[str, Sequence[str]],
    hyps: Mapping[str, Sequence[str]],
    speaker_of: Callable[[str], str] | Mapping[str, str] | None = None,
    metric: str = "PER",
) -> ScoreReport:
    """Score hypotheses against references, utterance id -> tokens.

    ``speaker_of`` maps an utterance id to its speaker (a function or a mapping); with
    ``None`` there is no per-speaker breakdown. An utterance in ``refs`` but not in ``hyps``
    counts as all deletions and is listed in ``ScoreReport.missing``; an utterance in ``hyps``
    but not in ``refs`` is a ValueError naming it.
    """
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"{len(extra)} hypotheses have no reference: {_name_some(extra)}")
    if isinstance(speaker_of, Mapping):
        unknown = sorted(u for u in refs if u not in speaker_of)
        if unknown:
            raise ValueError(f"no speaker for {len(unknown)} utterances: {_name_some(unknown)}")
        get_spk: Callable[[str], str] | None = speaker_of.__getitem__
    else:
        get_spk = speaker_of

    utterances: dict[str, UttScore] = {}
    speakers: dict[str, ErrorCounts] = {}
    speaker_utts: dict[str, int] = {}
    missing = []
    total = ErrorCounts(metric=metric)
    for utt in sorted(refs):
        ref = tuple(refs[utt])
        is_missing = utt not in hyps
        if is_missing:
            missing.append(utt)
        hyp = () if is_missing else tuple(hyps[utt])
        alignment = align(ref, hyp)
        counts = counts_from_alignment(alignment, metric=metric)
        spk = get_spk(utt) if get_spk is not None else None
        utterances[utt] = UttScore(utt, spk, ref, hyp, tuple(alignment), counts, is_missing)
        total = total + counts
        if spk is not None:
            speakers[spk] = speakers.get(spk, ErrorCounts(metric=metric)) + counts
            speaker_utts[spk] = speaker_utts.get(spk, 0) + 1
    order = sorted(speakers)
    return ScoreReport(
        metric=metric,
        total=total,
        speakers={s: speakers[s] for s in order},
        speaker_utts={s: speaker_utts[s] for s in order},
        utterances=utterances,
        missing=missing,
    )
