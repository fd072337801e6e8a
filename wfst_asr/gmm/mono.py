"""A monophone GMM-HMM system with kaldi-hmm-gmm, aligned with the FSA engine.

Kaldi's ``steps/train_mono.sh``, with its pieces in Python:

* acoustic model: a ``kaldi_hmm_gmm.AmDiagGmm``, one ``DiagGmm`` per pdf of a Kaldi HMM
  topology (:func:`wfst_asr.graphs.topo.make_topology`: ``hmm-3state`` or ``hmm-1state``,
  monophone: pdf = (phone, HMM state)); transition probabilities stay the topology's (not
  re-estimated);
* flat start (:meth:`MonoGmm.flat_start`): every pdf one Gaussian with the global mean and
  variance of the training features, then one EM step on equally spaced alignments
  (:func:`equal_alignment`, Kaldi's ``align-equal-compiled``);
* EM iterations (:func:`train_mono`): realign on some iterations, accumulate, update
  (``AccumAmDiagGmm`` + ``mle_am_diag_gmm_update``), and add Gaussians after each update up to
  ``tot_gauss`` (``AmDiagGmm.split_by_count``, occupancy to the power 0.25), as
  ``gmm-est --mix-up``;
* alignment (:meth:`MonoGmm.align`): the engine's Viterbi
  (:func:`wfst_asr.losses.align.viterbi_align`) on the ``pdf_topo`` training graphs of the
  transcripts (transition log-probs with Kaldi's ``self_loop_scale`` 0.1), with the per-frame
  GMM log-likelihoods times ``acoustic_scale`` (0.1) as emission scores.

The per-frame log-likelihoods and the E-step are computed in torch from the model's
parameters (one matrix product for all Gaussians of all pdfs, float64); the statistics go back
into Kaldi's accumulators with ``AccumDiagGmm.add_stats_for_component`` and Kaldi does the
M-step (variance floor, low-count Gaussian removal). A diagonal Gaussian's log-density is
``log w - (D log 2 pi + sum_d log var_d + sum_d (x_d - mu_d)^2 / var_d) / 2``; a pdf's
log-likelihood is the log-sum-exp (log semiring) of its Gaussians'.

Pdf ids are 0-based (``topology.tid2pdf``); alignments hold one pdf id per 10 ms frame, -1
where an utterance could not be aligned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from wfst_asr import _kaldi
from wfst_asr.graphs.topo import Topology, pdf_topo, phone_pdfs
from wfst_asr.graphs.training import HmmTrainingGraphCompiler
from wfst_asr.losses.align import equal_alignment, viterbi_align

__all__ = ["MonoGmm", "MonoOptions", "train_mono"]

log = logging.getLogger(__name__)


@dataclass
class MonoOptions:
    """Options of :func:`train_mono` (defaults: Kaldi's ``train_mono.sh``, but ``tot_gauss``
    sized for small data)."""

    num_iters: int = 40
    max_iter_inc: int = 30            # add Gaussians after the updates of iterations 0..this
    tot_gauss: int = 1000             # target number of Gaussians
    realign_iters: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23,
                                      26, 29, 32, 35, 38)
    acoustic_scale: float = 0.1       # alignment: GMM log-likelihoods times this
    power: float = 0.25               # Gaussians per pdf ~ occupancy ** power
    perturb_factor: float = 0.01
    min_count: float = 20.0           # split_by_count: no Gaussian below this occupancy
    min_gaussian_occupancy: float = 10.0
    min_variance: float = 0.001
    align_batch: int = 16             # utterances per engine call


class MonoGmm:
    """An ``AmDiagGmm`` over the pdfs of ``topology`` plus what aligning with it needs.

    ``model.am`` is the Kaldi object; :meth:`log_likelihoods` gives float64 ``[T, num_pdfs]``.
    """

    def __init__(self, topology: Topology, am) -> None:
        self.topology = topology
        self.am = am
        self.pdfs_of = phone_pdfs(topology)
        self._params: tuple[torch.Tensor, ...] | None = None
        self._compiler = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def flat_start(cls, topology: Topology, feats: Sequence[torch.Tensor]) -> MonoGmm:
        """Every pdf: one Gaussian with the global mean / variance of ``feats`` (``[T_i, D]``)."""
        khg = _kaldi.kaldi_hmm_gmm()
        x = torch.cat([f.to(torch.float64) for f in feats], 0)
        if x.shape[0] < 2:
            raise ValueError("flat_start needs at least 2 frames of features")
        mean, var = x.mean(0), x.var(0, unbiased=False).clamp(min=1e-3)
        proto = khg.DiagGmm(1, x.shape[1])
        proto.set_weights(np.ones(1, dtype=np.float32))
        proto.set_invvars_and_means((1.0 / var).float().numpy()[None],
                                    mean.float().numpy()[None])
        proto.compute_gconsts()
        am = khg.AmDiagGmm()
        am.init(proto, topology.num_pdfs)
        return cls(topology, am)

    @classmethod
    def from_params(cls, topology: Topology, params: dict[str, list[torch.Tensor]]) -> MonoGmm:
        """Rebuild from :meth:`params` (``weights [G_p]``, ``means``/``vars`` ``[G_p, D]``
        per pdf)."""
        khg = _kaldi.kaldi_hmm_gmm()
        am = khg.AmDiagGmm()
        for w, m, v in zip(params["weights"], params["means"], params["vars"]):
            g = khg.DiagGmm(w.numel(), m.shape[1])
            g.set_weights(w.float().numpy())
            g.set_invvars_and_means((1.0 / v).float().numpy(), m.float().numpy())
            g.compute_gconsts()
            am.add_pdf(g)
        if am.num_pdfs != topology.num_pdfs:
            raise ValueError(f"the GMM has {am.num_pdfs} pdfs, topology {topology.name!r} "
                             f"{topology.num_pdfs}")
        return cls(topology, am)

    def params(self) -> dict[str, list[torch.Tensor]]:
        """``{"weights", "means", "vars"}``: one float32 tensor per pdf (for saving)."""
        out: dict[str, list[torch.Tensor]] = {"weights": [], "means": [], "vars": []}
        for p in range(self.am.num_pdfs):
            g = self.am.get_pdf(p)
            out["weights"].append(torch.from_numpy(np.array(g.weights, dtype=np.float32)))
            out["means"].append(torch.from_numpy(np.array(g.means, dtype=np.float32)))
            out["vars"].append(torch.from_numpy(np.array(g.vars, dtype=np.float32)))
        return out

    @property
    def num_gauss(self) -> int:
        return int(self.am.num_gauss)

    # ------------------------------------------------------------------ likelihoods
    def _tensors(self) -> tuple[torch.Tensor, ...]:
        """``(gconsts [G], means_invvars [G, D], inv_vars [G, D], pdf_of_gauss [G])`` float64
        (int64 for the last) of all Gaussians, pdf by pdf (cached until the model changes)."""
        if self._params is None:
            gc, mi, iv, pdf = [], [], [], []
            for p in range(self.am.num_pdfs):
                g = self.am.get_pdf(p)
                gc.append(torch.from_numpy(np.array(g.gconsts, dtype=np.float64)).reshape(-1))
                mi.append(torch.from_numpy(np.array(g.means_invvars, dtype=np.float64)))
                iv.append(torch.from_numpy(np.array(g.inv_vars, dtype=np.float64)))
                pdf.append(torch.full((gc[-1].numel(),), p, dtype=torch.int64))
            self._params = (torch.cat(gc), torch.cat(mi), torch.cat(iv), torch.cat(pdf))
        return self._params

    def _changed(self) -> None:
        self._params = None

    def gauss_log_likelihoods(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``[T, G]``: log(weight x density) of every Gaussian (pdf by pdf) for
        ``x [T, D]``."""
        gc, mi, iv, _ = self._tensors()
        x = x.to(torch.float64)
        return gc + x @ mi.t() - 0.5 * (x * x) @ iv.t()

    def log_likelihoods(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``[T, num_pdfs]``: each pdf's GMM log-likelihood of each frame of ``x``."""
        gl = self.gauss_log_likelihoods(x)
        pdf = self._tensors()[3]
        P = self.am.num_pdfs
        m = torch.full((gl.shape[0], P), -math.inf, dtype=gl.dtype)
        m = m.scatter_reduce(1, pdf.expand_as(gl), gl, "amax", include_self=True)
        s = torch.zeros_like(m).scatter_add_(1, pdf.expand_as(gl), (gl - m[:, pdf]).exp())
        return m + s.log()

    # ------------------------------------------------------------------ EM
    def accumulate(self, feats: Sequence[torch.Tensor], alis: Sequence[torch.Tensor | None],
                   chunk: int = 4096):
        """E-step over aligned frames: ``(AccumAmDiagGmm, total log-likelihood, frames)``.

        Each frame ``t`` of utterance ``i`` with ``alis[i][t] >= 0`` adds the posteriors of the
        Gaussians of pdf ``alis[i][t]`` (Viterbi training: the pdf is given)."""
        khg = _kaldi.kaldi_hmm_gmm()
        pairs = [(f, a) for f, a in zip(feats, alis) if a is not None]
        x = torch.cat([f.to(torch.float64) for f, _ in pairs], 0)
        a = torch.cat([torch.as_tensor(al, dtype=torch.int64) for _, al in pairs], 0)
        x, a = x[a >= 0], a[a >= 0]
        _, _, _, pdf = self._tensors()
        counts = torch.bincount(pdf, minlength=self.am.num_pdfs)
        first = torch.cumsum(counts, 0) - counts  # index of each pdf's first Gaussian
        acc = khg.AccumAmDiagGmm()
        acc.init(self.am, int(khg.GmmUpdateFlags.kGmmAll))
        tot = 0.0
        for s in range(0, x.shape[0], chunk):
            xc, ac = x[s:s + chunk], a[s:s + chunk]
            gl = self.gauss_log_likelihoods(xc)
            gl = gl.masked_fill(pdf.unsqueeze(0) != ac.unsqueeze(1), -math.inf)
            ll = torch.logsumexp(gl, 1)
            tot += float(ll.sum())
            post = (gl - ll.unsqueeze(1)).exp().float().numpy()
            xs = xc.float().numpy()
            # one call per frame: Kaldi accumulates occupancy, x and x^2 of the pdf's Gaussians
            for n, (p, f) in enumerate(zip(ac.tolist(), first[ac].tolist())):
                acc.accumulate_from_posteriors(self.am, xs[n], p,
                                               post[n, f:f + int(counts[p])])
        return acc, tot, int(x.shape[0])

    def update(self, acc, opts: MonoOptions) -> tuple[float, float]:
        """M-step (``mle_am_diag_gmm_update``, means, variances and weights):
        ``(objective improvement, count)``."""
        khg = _kaldi.kaldi_hmm_gmm()
        mopts = khg.MleDiagGmmOptions(min_gaussian_occupancy=opts.min_gaussian_occupancy,
                                      min_variance=opts.min_variance)
        out = khg.mle_am_diag_gmm_update(mopts, acc, int(khg.GmmUpdateFlags.kGmmAll), self.am)
        self._changed()
        return out

    def mix_up(self, acc, target: int, opts: MonoOptions) -> None:
        """Split Gaussians up to ``target`` in total, pdfs getting shares ~ occupancy ** power."""
        occs = np.array([float(np.sum(np.array(acc.get_acc(p).occupancy)))
                         for p in range(self.am.num_pdfs)], dtype=np.float32)
        if target > self.num_gauss:
            self.am.split_by_count(occs, int(target), opts.perturb_factor, opts.power,
                                   opts.min_count)
            self.am.compute_gconsts()
            self._changed()

    # ------------------------------------------------------------------ alignment
    def pdf_sequence(self, tokens: Sequence[int]) -> list[int]:
        """The pdfs of the HMM states of ``tokens`` (phone ids), in order."""
        try:
            return [q for t in tokens for q in self.pdfs_of[int(t)]]
        except KeyError as e:
            raise ValueError(f"phone {e.args[0]} is not in topology {self.topology.name!r}"
                             ) from None

    def compiler(self):
        if self._compiler is None:
            self._compiler = HmmTrainingGraphCompiler(pdf_topo(self.topology))
        return self._compiler

    def align(self, feats: Sequence[torch.Tensor], texts: Sequence[Sequence[int]],
              acoustic_scale: float = 0.1, batch: int = 16, compiler=None
              ) -> list[torch.Tensor | None]:
        """Viterbi forced alignments (pdf ids ``[T_i]``, int64) of each utterance, None where
        the transcript has no path of that length (the caller counts them).

        ``compiler`` (default :meth:`compiler`: token transcripts) is anything with
        ``compile(texts) -> FsaVec`` of graphs over the outputs of ``pdf_topo(topology)``
        (pdf + 1), e.g. a :class:`~wfst_asr.graphs.training.HmmTrainingGraphCompiler` on
        ``pdf_topo`` with a lexicon or an ``L`` with optional silence; ``texts`` are what it
        compiles."""
        compiler = compiler if compiler is not None else self.compiler()
        out: list[torch.Tensor | None] = []
        for s in range(0, len(feats), batch):
            fs, ts = feats[s:s + batch], texts[s:s + batch]
            lens = torch.tensor([f.shape[0] for f in fs], dtype=torch.int64)
            lp = torch.zeros(len(fs), int(lens.max()), self.am.num_pdfs + 1)
            for i, f in enumerate(fs):
                lp[i, :f.shape[0], 1:] = (acoustic_scale * self.log_likelihoods(f)).float()
            graphs = compiler.compile([list(t) for t in ts])
            ali = viterbi_align(graphs, lp, lens)
            for i, n in enumerate(lens.tolist()):
                row = ali[i, :n]
                out.append(row - 1 if n and bool((row >= 1).all()) else None)
        return out


def train_mono(topology: Topology, feats: Sequence[torch.Tensor],
               texts: Sequence[Sequence[int]], opts: MonoOptions | None = None,
               names: Sequence[str] | None = None,
               report: Callable[[dict], None] | None = None, compiler=None,
               init_texts: Sequence[Sequence[int]] | None = None
               ) -> tuple[MonoGmm, list[torch.Tensor | None]]:
    """Train a monophone GMM (module docstring) on ``feats`` (``[T_i, D]``) with transcripts
    ``texts`` (phone ids); return the model and the final alignments (pdf ids per frame; None
    for an utterance that could not be aligned, logged by ``names[i]``).

    With a ``compiler`` (see :meth:`MonoGmm.align`), ``texts`` are what it compiles (e.g. word
    ids, graphs with optional silence) and ``init_texts`` the phone ids of one path of each
    graph, spread equally over the frames for the first iteration (default ``texts``).

    ``report(record)`` (optional) gets one dict per iteration: ``iter``, ``realigned``,
    ``loglike_per_frame`` (of the aligned pdfs, before the update), ``frames``, ``num_gauss``
    (after mixing up), ``unaligned``, ``seconds``."""
    opts = opts or MonoOptions()
    names = list(names) if names is not None else [str(i) for i in range(len(feats))]
    model = MonoGmm.flat_start(topology, feats)
    init_texts = texts if init_texts is None else init_texts
    alis = [equal_alignment(model.pdf_sequence(t), f.shape[0])
            for f, t in zip(feats, init_texts)]
    _report_unaligned(alis, names, "equal alignment")
    num_gauss = model.num_gauss
    inc = max((opts.tot_gauss - num_gauss) // max(opts.max_iter_inc, 1), 0)
    for it in range(opts.num_iters):
        t0 = time.perf_counter()
        realigned = it in opts.realign_iters
        if realigned:
            new = model.align(feats, texts, opts.acoustic_scale, opts.align_batch, compiler)
            _report_unaligned(new, names, f"iteration {it}")
            alis = new
        acc, tot, frames = model.accumulate(feats, alis)
        model.update(acc, opts)
        if it <= opts.max_iter_inc:
            num_gauss = min(num_gauss + inc, opts.tot_gauss)
            model.mix_up(acc, num_gauss, opts)
        rec = {"iter": it, "realigned": realigned, "loglike_per_frame": tot / max(frames, 1),
               "frames": frames, "num_gauss": model.num_gauss,
               "unaligned": sum(a is None for a in alis),
               "seconds": time.perf_counter() - t0}
        log.info("mono iter %(iter)d: loglike/frame %(loglike_per_frame).3f over %(frames)d "
                 "frames, %(num_gauss)d Gaussians%(r)s", {**rec, "r": ", realigned" * realigned})
        if report is not None:
            report(rec)
    final = model.align(feats, texts, opts.acoustic_scale, opts.align_batch, compiler)
    _report_unaligned(final, names, "final alignment")
    return model, final


def _report_unaligned(alis: Sequence[torch.Tensor | None], names: Sequence[str],
                      what: str) -> None:
    bad = [n for n, a in zip(names, alis) if a is None]
    if bad:
        log.warning("%s: %d utterance(s) not aligned (transcript longer than the frames "
                    "allow, or no path), skipped: %s", what, len(bad), bad[:10])
