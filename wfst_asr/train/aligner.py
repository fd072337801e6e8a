"""The aligner job (``wfst-asr align``): forced alignments of transcripts with what a trainer
left in an experiment directory, as CTM, scored by boundary accuracy against reference
segmentations, optionally drawn.

How each kind of model aligns the transcript ``y`` (its ``ref_field``):

==============  ===========================================================================
``segmental``   the best path of the constrained segment lattice of ``y``
                (:func:`~wfst_asr.fsa.segment.best_segmentation`): one segment per label
``ctc``         the best path of ``y``'s CTC graph (:func:`~wfst_asr.losses.viterbi_align`):
                a token starts at the first frame of its emission; blank frames belong to the
                token before them (leading blanks to the first token)
``hmm``, ``mmi``  the best path of ``y``'s HMM training graph (Kaldi topology: frames' pdfs
                mapped to phones, a segment per run of one phone; a CTC topology as ``ctc``)
GMM directory   as ``hmm``, on the GMM's scaled log-likelihoods (its own topology)
==============  ===========================================================================

Times: output frame ``f`` starts at ``f * subsampling * frame_shift`` seconds. References
(``ref_frames_field``) are per-input-frame labels (``wfst-asr frame-labels``), cut into runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.fsa.segment import best_segmentation
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.graphs.training import ctc_graph
from wfst_asr.losses import HmmLoss, viterbi_align
from wfst_asr.losses.segmental import pad_labels, runs

from .inference import ModelOutputs

__all__ = ["ALIGNABLE", "AlignError", "Aligner", "ctc_token_spans", "reference_alignments",
           "write_ctm"]

PathLike = str | os.PathLike
Segment = tuple[float, float, str]
#: the losses whose models can align
ALIGNABLE = ("ctc", "hmm", "mmi", "segmental")


class AlignError(ValueError):
    """An alignment run that cannot go on for a reason the user can fix (one line)."""


def ctc_token_spans(frames: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, end, token)`` output-frame spans of a CTC best path (``frames``: token id or
    0 = blank per frame): a token starts where it is emitted (a non-blank frame unlike the
    frame before it); blanks join the token before them, leading blanks the first one."""
    starts: list[tuple[int, int]] = []
    prev = 0
    for t, lab in enumerate(int(x) for x in frames):
        if lab > 0 and lab != prev:
            starts.append((t, lab))
        prev = lab
    if not starts:
        return []
    n = len(frames)
    out = []
    for i, (t, lab) in enumerate(starts):
        s = 0 if i == 0 else t
        e = starts[i + 1][0] if i + 1 < len(starts) else n
        out.append((s, e, lab))
    return out


def write_ctm(path: PathLike, alignments: dict[str, list[Segment]]) -> None:
    """Kaldi CTM lines ``utt 1 start duration label`` (seconds, 2 decimals kept to 0.001)."""
    lines = [f"{utt} 1 {s:.3f} {e - s:.3f} {lab}\n"
             for utt, segs in alignments.items() for s, e, lab in segs]
    atomic_write_text(path, "".join(lines))


class Aligner:
    """Forced alignments with the model of ``exp_dir`` (see the module docstring), loaded and
    run over the data as the decoder job does (:class:`~wfst_asr.train.decoder.Decoder`:
    network experiment directories, and monophone GMM directories, whose 3-state HMM aligns
    like a hybrid's).

    Args:
      exp_dir: an experiment directory (``config.json`` + ``averaged.pt`` / ``best.pt``) or a
        GMM directory (``gmm.pt``).
      lang_dir: the lang dir (its ``tokens.txt``; needed for a GMM directory).
      ref_field: the supervision field of the transcripts (default: the model's token field).
      device: where the model runs (default: cuda if available).
      max_duration: seconds of audio per batch.
    """

    def __init__(self, exp_dir: PathLike, lang_dir: PathLike | None = None,
                 ref_field: str | None = None, device: str | None = None,
                 max_duration: float = 200.0) -> None:
        from .decoder import DecodeError, DecodeOptions, Decoder

        try:
            self.dec = Decoder(exp_dir, lang_dir, options=DecodeOptions(
                ref_field=ref_field, device=device, max_duration=max_duration), log=None)
        except DecodeError as e:
            raise AlignError(str(e)) from e
        self.exp_dir, self.device = Path(exp_dir), self.dec.device
        self.loss, self.model, self.topo = self.dec.loss, self.dec.model, self.dec.topo
        if self.loss not in (*ALIGNABLE, "gmm"):
            raise AlignError(f"{self.exp_dir}: a {self.loss!r} model cannot align (one of "
                             f"{', '.join(ALIGNABLE)}, or a GMM directory)")
        tokens = self.dec.tokens
        if tokens is None:
            if lang_dir is None:
                raise AlignError(f"{self.exp_dir}: give the lang dir (its tokens.txt)")
            tokens = read_token_list(Path(lang_dir) / "tokens.txt")
        self.tokens = list(tokens)
        self.table = {t: i for i, t in enumerate(self.tokens, start=1)}
        self.ref_field = self.dec.ref_field
        self.subsampling = int(getattr(self.model, "subsampling_factor", 1) or 1)
        self.options = self.dec.loss_opts

    # ------------------------------------------------------------------ alignment
    def _ids(self, utt: str, ref: Sequence) -> list[int]:
        try:
            return [int(r) if isinstance(r, int) else self.table[str(r)] for r in ref]
        except KeyError as e:
            raise AlignError(f"utterance {utt}: {e.args[0]!r} of field {self.ref_field!r} is "
                             "not one of the model's tokens") from None

    def _frames(self, b: ModelOutputs, seqs: list[list[int]]) -> list[list[tuple[int, int, int]]]:
        """Output-frame spans ``(start, end, token id)`` per utterance of a batch."""
        lp, lens = b.log_probs.to(self.device), b.lens.to(self.device)
        if self.loss == "segmental":
            with torch.no_grad():
                scores = self.model.segment_scores(lp, lens)
            lab, lab_lens = pad_labels([[y - 1 for y in s] for s in seqs], self.device)
            best = best_segmentation(scores, lens, lab, lab_lens)
            return [[(s, t, y + 1) for s, t, y in segs] for segs in best]
        if self.topo is None or self.topo.is_ctc:
            graphs = ctc_graph(seqs, modified=bool(self.options.get("modified", False)))
            ali = viterbi_align(graphs, lp, lens).cpu()
            return [ctc_token_spans(ali[i, :int(n)].tolist()) if int(ali[i, 0]) >= 0 else []
                    for i, n in enumerate(b.lens.tolist())]
        from wfst_asr.decode.hmm import pdf_to_token

        ali = viterbi_align(HmmLoss(self.topo).graphs(seqs), lp, lens).cpu()
        tok = pdf_to_token(self.topo)
        out = []
        for i, n in enumerate(b.lens.tolist()):
            row = ali[i, :int(n)]
            out.append([] if int(n) == 0 or int(row[0]) < 0 else runs(tok[row].tolist()))
        return out

    def align(self, cuts_path: PathLike, keep_outputs: bool = False
              ) -> tuple[dict[str, list[Segment]], dict[str, Any]]:
        """``({utt: segments in seconds}, {utt: (outputs [T', V], lens)} if keep_outputs)``;
        an utterance the model cannot align (no path: too few frames) gets ``[]``."""
        from lhotse import CutSet

        shift = {c.supervisions[0].id: float(c.frame_shift) for c in CutSet.from_file(cuts_path)
                 if c.supervisions}
        try:
            batches = self.dec.outputs(cuts_path)
        except ValueError as e:
            raise AlignError(str(e)) from e
        out: dict[str, list[Segment]] = {}
        kept: dict[str, Any] = {}
        for b in batches:
            seqs = [self._ids(u, r) for u, r in zip(b.ids, b.refs)]
            for i, (u, spans) in enumerate(zip(b.ids, self._frames(b, seqs))):
                step = self.subsampling * shift.get(u, 0.01)
                out[u] = [(s * step, e * step, self.tokens[y - 1]) for s, e, y in spans]
                if keep_outputs:
                    kept[u] = b.log_probs[i, :int(b.lens[i])]
        return out, kept


def reference_alignments(cuts_path: PathLike, field: str | None = None,
                         alignment: str | None = None,
                         mapping: dict[str, str | None] | None = None
                         ) -> dict[str, list[Segment]]:
    """``{utt: segments}`` of the reference segmentations of a cut manifest: the supervisions'
    lhotse ``alignment`` of type ``alignment`` (times as labelled, symbols through ``mapping``:
    :func:`~wfst_asr.data.frame_labels.alignment_segments`), or a per-input-frame label
    ``field`` (runs of equal labels, at the features' frame shift)."""
    from lhotse import CutSet

    from wfst_asr.data.frame_labels import FrameLabelError, alignment_segments

    if (field is None) == (alignment is None):
        raise AlignError("give exactly one of a reference alignment type or a frame field")
    out: dict[str, list[Segment]] = {}
    for c in CutSet.from_file(cuts_path):
        for sup in c.supervisions:
            if alignment is not None:
                items = (sup.alignment or {}).get(alignment)
                try:
                    out[sup.id] = alignment_segments(items or [], mapping)[0]
                except FrameLabelError as e:
                    raise AlignError(f"{cuts_path}: supervision {sup.id}: {alignment!r} "
                                     f"alignment: {e}") from None
                continue
            labels = (sup.custom or {}).get(field)
            if labels is None:
                raise AlignError(f"{cuts_path}: supervision {sup.id} has no field {field!r}")
            labels = labels.split() if isinstance(labels, str) else list(labels)
            names = sorted(set(labels))
            idx = {n: i for i, n in enumerate(names)}
            step = float(c.frame_shift)
            out[sup.id] = [(s * step, e * step, names[y])
                           for s, e, y in runs([idx[x] for x in labels])]
    return out
