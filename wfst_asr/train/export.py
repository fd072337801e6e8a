"""Inference export: a trained CTC model as one self-contained directory, and reading it back
to transcribe audio files (``wfst-asr export`` / ``wfst-asr transcribe``).

:func:`export_model` writes ``OUT`` (atomically: a temporary folder renamed into place; an
error leaves nothing behind) with

=================  =========================================================================
``model.pt``       the network as TorchScript: ``torch.jit.script``, else ``torch.jit.trace``
                   (the encoders here do not script; ``torch.export`` refuses their
                   data-dependent checks); ``(features [B, T, F], lens [B]) -> (log_probs
                   [B, T', V], out_lens [B])``. A traced network is checked against the model
                   at another length and batch size. A trace fixes the device: it runs on
                   the device it was exported for.
``export.json``    what to read back: the feature extractor (its lhotse name and config), its
                   sampling rate and frame shift, the subsampling factor, the files below,
                   the decoding settings
``config.json``    the experiment's configuration
``cmvn.pt``        the configuration's global CMVN (when it has one)
``tokens.txt``     the model's tokens (blank = 0)
``lang/``          the lang dir's top-level text files (``tokens.txt``, ``words.txt``,
                   lexicon, ...), when one is given
``graph.pt|.fst``  a decoding graph (HLG), when one is given
=================  =========================================================================

The feature settings are those of the training cuts' features (``train_cuts``): their lhotse
``type`` (``knf-fbank`` / ``knf-mfcc``), dimension and frame shift give the
:func:`~wfst_asr.data.make_extractor` options that ``wfst-asr compute-features`` varies; the
first cut's features are recomputed from its audio (when readable) and must match.

:func:`load_exported` reads ``OUT`` back as an :class:`ExportedModel`, which reads audio with
lhotse (resampled with lhotse's torch resampler when the rate differs), computes features with
the same extractor, applies CMVN, runs the network and decodes: greedy CTC over the tokens, or
the best path of the graph (the engine's search of ``wfst-asr decode``'s graph method), with
word times for CTM.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wfst_asr.data.dataset import open_cuts
from wfst_asr.data.features import apply_cmvn, check_audio_length, load_cmvn, make_extractor
from wfst_asr.decode.lattice import WordSpan, best_paths, ctm_lines, get_lattice, word_alignment
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.graphs.bpe import WORD_BOUNDARY, is_piece_table
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.train.decoder import DecodeOptions
from wfst_asr.train.inference import CHECKPOINT_NAMES, load_model

__all__ = ["ExportError", "ExportedModel", "Transcript", "export_model", "load_exported",
           "training_features"]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
MANIFEST = "export.json"
FORMAT = 1
#: losses whose network output is CTC log-probs over blank + the tokens
CTC_LOSSES = ("ctc", "dbd")
#: ``wfst-asr compute-features`` extractors: lhotse type -> (kind, the option the dim gives)
EXTRACTORS = {"knf-fbank": ("fbank", "num_mel_bins"), "knf-mfcc": ("mfcc", "num_ceps")}
#: largest difference of recomputed features from stored ones (lilcom storage is lossy)
FEATURE_TOLERANCE = 0.1


class ExportError(ValueError):
    """An export or an exported directory that cannot be used (one line naming the file)."""


# --------------------------------------------------------------------------- export
def _locate(path: str, exp: Path, what: str) -> Path:
    """A path of the configuration: as given (relative to the working directory), else
    relative to a parent of the experiment directory (a recipe's folder)."""
    for base in (Path.cwd(), *exp.resolve().parents):
        p = Path(path) if Path(path).is_absolute() else base / path
        if p.exists():
            return p
    raise ExportError(f"{path}: no such file ({what} of {exp}/config.json)")


def _load_network(exp: Path, checkpoint: PathLike | None, task: str | None = None
                  ) -> tuple[torch.nn.Module, dict, Path]:
    """``(model in eval mode on the CPU, config dict, checkpoint path)``
    (:func:`~wfst_asr.train.inference.load_model`)."""
    if checkpoint and not Path(checkpoint).is_file():
        raise ExportError(f"{checkpoint}: no such checkpoint")
    if not checkpoint and not any((exp / n).is_file() for n in CHECKPOINT_NAMES):
        raise ExportError(f"{exp}: no checkpoint ({' or '.join(CHECKPOINT_NAMES)}); train the "
                          "model first or give --checkpoint")
    return load_model(exp, "cpu", checkpoint, task)


def training_features(cfg: dict[str, Any], exp: PathLike, check: bool = True):
    """``(extractor, sampling rate, note)``: the extractor of the training cuts' features.

    With ``check``, the first cut's features are recomputed from its audio and compared with
    the stored ones (:data:`FEATURE_TOLERANCE`); ExportError when they differ; ``note`` says
    whether the check ran.
    """
    exp = Path(exp)
    if not cfg.get("train_cuts"):
        raise ExportError(f"{exp}/config.json has no train_cuts (the features' settings)")
    path = _locate(str(cfg["train_cuts"]), exp, "train_cuts")
    cut = next((c for c in open_cuts(path) if c.has_features), None)
    if cut is None:
        raise ExportError(f"{path}: no cut with features")
    f = cut.features
    if f.type not in EXTRACTORS:
        raise ExportError(f"{path}: features of type {f.type!r}; export knows the extractors "
                          f"of wfst-asr compute-features ({', '.join(EXTRACTORS)})")
    kind, dim_key = EXTRACTORS[f.type]
    extractor = make_extractor(kind, **{dim_key: int(f.num_features),
                                        "frame_shift_ms": round(f.frame_shift * 1000.0, 6)})
    note = f"{f.type} {f.num_features} dims at {f.sampling_rate} Hz, from {path}"
    if not check:
        return extractor, int(f.sampling_rate), note
    try:
        again = torch.from_numpy(cut.compute_features(extractor))
    except Exception as e:  # noqa: BLE001 -- audio moved or unreadable: no check, say so
        why = f"not checked: the audio of cut {cut.id} is unreadable: {type(e).__name__}"
        return extractor, int(f.sampling_rate), f"{note} ({why})"
    stored = torch.from_numpy(cut.load_features())
    diff = float((again - stored).abs().max()) if again.shape == stored.shape else float("inf")
    if diff > FEATURE_TOLERANCE:
        raise ExportError(f"{path}: cut {cut.id}'s features recomputed as {f.type} "
                          f"{extractor.config} differ from the stored ones (max difference "
                          f"{diff:.3g}): they were computed with other settings")
    return extractor, int(f.sampling_rate), f"{note} (checked on cut {cut.id})"


def script_model(model: torch.nn.Module, num_features: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.jit.ScriptModule, str]:
    """``(TorchScript module, "script" | "trace")`` of ``model``'s ``forward(x [B, T, F],
    lens [B]) -> (log_probs [B, T', V], out_lens [B])``; a trace is checked against the model
    on inputs of another batch size and length (ExportError when they differ)."""
    model = model.to(device).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(model), "script"
    except Exception as e:  # noqa: BLE001 -- any scripting failure: trace instead
        log.info("%s cannot be scripted (%s): tracing it", type(model).__name__,
                 str(e).splitlines()[0] if str(e) else type(e).__name__)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, num_features, generator=gen).to(device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings: the check below decides
        traced = torch.jit.trace(model, (x, torch.tensor([200], device=device)),
                                 check_trace=False)
        x2 = torch.randn(2, 97, num_features, generator=gen).to(device)
        lens2 = torch.tensor([97, 61], device=device)
        want, got = model(x2, lens2), traced(x2, lens2)
    same = want[0].shape == got[0].shape and torch.equal(want[1], got[1]) and \
        torch.allclose(want[0], got[0], atol=1e-5, rtol=1e-5)
    if not same:
        raise ExportError(f"{type(model).__name__} cannot be scripted and its trace differs "
                          "from the model at another input length")
    return traced, "trace"


def read_graph(path: PathLike) -> Fsa:
    """A decoding graph file: ``.pt`` (:func:`wfst_asr.fsa.save`) or OpenFst ``.fst``, with
    output labels."""
    from wfst_asr.fsa import load, read_fst

    p = Path(path)
    g = load(p) if p.suffix == ".pt" else read_fst(p, acceptor=False)
    if not g.has_attr("aux_labels"):
        raise ExportError(f"{p}: the graph has no output labels (aux_labels)")
    return g


def _decoding(exp: Path, lm_scale: float | None, word_penalty: float | None) -> dict[str, Any]:
    """Graph decoding settings: those given, else ``EXP/decode/settings.json``'s tuned ``hlg``
    setting, else lm_scale 1, no penalty; the search beams of :class:`DecodeOptions`."""
    tuned: dict[str, Any] = {}
    settings = exp / "decode" / "settings.json"
    if settings.is_file():
        try:
            tuned = json.loads(settings.read_text())["methods"]["hlg"]["setting"] or {}
        except (ValueError, KeyError, TypeError):
            tuned = {}
    o = DecodeOptions()
    return {"lm_scale": float(lm_scale if lm_scale is not None else tuned.get("lm_scale", 1.0)),
            "word_penalty": float(word_penalty if word_penalty is not None
                                  else tuned.get("word_penalty", 0.0)),
            "search_beam": float(o.search_beam), "max_active": int(o.max_active)}


def export_model(exp_dir: PathLike, out_dir: PathLike, checkpoint: PathLike | None = None,
                 lang_dir: PathLike | None = None, graph: PathLike | None = None,
                 device: str = "cpu", force: bool = False, lm_scale: float | None = None,
                 word_penalty: float | None = None, task: str | None = None) -> dict[str, Any]:
    """Write the export directory ``out_dir`` of ``exp_dir`` (see the module doc); return its
    manifest. ``force`` replaces an existing ``out_dir``; ``task``: the head of a multi-task
    experiment (default: its first task). ExportError / CheckpointError /
    OSError name the file at fault; on any error ``out_dir`` is as it was."""
    exp, out = Path(exp_dir), Path(out_dir)
    if not exp.is_dir():
        raise ExportError(f"{exp}: no such experiment directory")
    if out.exists() and not force:
        raise ExportError(f"{out}: exists (remove it or give --force)")
    model, cfg, ckpt = _load_network(exp, checkpoint, task)
    loss = str(cfg.get("loss", "ctc"))
    if loss not in CTC_LOSSES:
        raise ExportError(f"{exp}: export handles CTC models (loss {' or '.join(CTC_LOSSES)}), "
                          f"not loss {loss!r}")
    extractor, rate, note = training_features(cfg, exp)
    tokens_file = cfg.get("tokens") or (f"{cfg['lang_dir']}/tokens.txt" if cfg.get("lang_dir")
                                        else None)
    if not tokens_file:
        raise ExportError(f"{exp}/config.json names no tokens (tokens or lang_dir)")
    tokens_path = _locate(str(tokens_file), exp, "tokens")
    tokens = read_token_list(tokens_path)
    if len(tokens) + 1 != int(cfg["num_classes"]):
        raise ExportError(f"{tokens_path}: {len(tokens)} tokens, but the model has "
                          f"{cfg['num_classes']} outputs")
    lang = Path(lang_dir) if lang_dir is not None else None
    if lang is not None:
        if not (lang / "tokens.txt").is_file():
            raise ExportError(f"{lang}/tokens.txt: no such file (not a lang dir?)")
        if read_token_list(lang / "tokens.txt") != tokens:
            raise ExportError(f"the tokens of {lang}/tokens.txt are not the model's "
                              f"({tokens_path})")
    g = read_graph(graph) if graph is not None else None
    if g is not None:
        top = int(g.labels.max()) if g.num_arcs else 0
        if top >= int(cfg["num_classes"]):
            raise ExportError(f"{graph}: input label {top}, but the model has only "
                              f"{cfg['num_classes']} outputs: built for other tokens")
        if (lang is None or not (lang / "words.txt").is_file()) and \
                not isinstance(getattr(g, "aux_labels_sym", None), SymbolTable):
            raise ExportError(f"{graph}: no symbol table for its outputs: give --lang-dir")
    scripted, how = script_model(model, int(cfg["num_features"]), device)
    cmvn = _locate(str(cfg["cmvn"]), exp, "cmvn") if cfg.get("cmvn") else None
    manifest = {
        "format": FORMAT, "model": cfg.get("model"), "loss": loss, "export": how,
        "device": str(torch.device(device)), "checkpoint": str(ckpt),
        "num_features": int(cfg["num_features"]), "num_classes": int(cfg["num_classes"]),
        "subsampling_factor": int(getattr(model, "subsampling_factor", 1) or 1),
        "subsampling_mode": str(getattr(model, "subsampling_mode", "floor")),
        "features": {"type": extractor.name, "config": dataclasses.asdict(extractor.config)},
        "sampling_rate": rate,
        "frame_shift": float(extractor.frame_shift), "features_from": note,
        "cmvn": "cmvn.pt" if cmvn is not None else None, "tokens": "tokens.txt",
        "lang": "lang" if lang is not None else None,
        "graph": f"graph{Path(graph).suffix}" if graph is not None else None,
        "decoding": _decoding(exp, lm_scale, word_penalty)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 -> a normal folder's permissions
        scripted.save(str(tmp / "model.pt"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokens_path, tmp / "tokens.txt")
        if cmvn is not None:
            shutil.copyfile(cmvn, tmp / "cmvn.pt")
        if lang is not None:
            (tmp / "lang").mkdir()
            for p in sorted(lang.iterdir()):
                if p.is_file() and p.suffix == ".txt":
                    shutil.copyfile(p, tmp / "lang" / p.name)
        if graph is not None:
            shutil.copyfile(graph, tmp / manifest["graph"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = None
        if out.exists():  # --force: move the old one aside, then drop it
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --------------------------------------------------------------------------- read back
@dataclass
class Transcript:
    """The 1-best of one file: its output symbols and their frames."""

    words: list[str]
    """words of the graph's output table, or tokens (word pieces joined into words)"""
    spans: list[WordSpan] = field(default_factory=list)
    """one per word, in order: ``word`` = its index in :attr:`words`, network output frames
    ``[start, end)``"""
    step: float = 0.01
    """seconds per network output frame (frame shift x subsampling factor)"""

    def ctm(self, name: str) -> list[str]:
        """Kaldi CTM lines ``name 1 start duration word`` (seconds)."""
        return ctm_lines(name, self.spans, frame_shift=self.step,
                         words=dict(enumerate(self.words)))


def _join_pieces(spans: list[WordSpan], symbols: list[str]) -> list[tuple[int, int, str]]:
    """Word-piece spans joined into words (a piece starting with ``▁`` starts a word)."""
    out: list[tuple[int, int, str]] = []
    for sp, sym in zip(spans, symbols):
        if sym.startswith(WORD_BOUNDARY) or not out:
            out.append((sp.start, sp.end, sym.lstrip(WORD_BOUNDARY)))
        else:
            s, _, w = out[-1]
            out[-1] = (s, sp.end, w + sym)
    return [x for x in out if x[2]]


class ExportedModel:
    """An export directory read back (:func:`load_exported`).

    Attributes: ``model`` (TorchScript), ``extractor`` and ``sampling_rate``, ``cmvn``
    (``(mean [F], std [F])`` or None), ``tokens`` (id ``i`` is ``tokens[i - 1]``), ``graph``
    and ``words`` (None without a graph), ``manifest`` (``export.json``), ``device``.
    """

    def __init__(self, folder: PathLike, device: str | None = None) -> None:
        from lhotse.features.base import get_extractor_type

        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ExportError(f"{path}: no such file (not a directory of wfst-asr export)")
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ExportError(f"{path}: not JSON ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ExportError(f"{path}: not an export manifest of format {FORMAT}")
        self.manifest = m
        self.device = torch.device(device or m["device"])
        if m["export"] == "trace" and self.device != torch.device(m["device"]):
            raise ExportError(f"{self.folder}: the network was traced for {m['device']}; "
                              f"export it again with --device {self.device}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(self.folder / "model.pt"), map_location=self.device)
        self.model.eval()
        kind = get_extractor_type(m["features"]["type"])
        self.extractor = kind(kind.config_type(**m["features"]["config"]))
        self.sampling_rate = int(m["sampling_rate"])
        self.step = float(m["frame_shift"]) * int(m["subsampling_factor"])
        self.cmvn = load_cmvn(self.folder / m["cmvn"]) if m.get("cmvn") else None
        self.tokens = read_token_list(self.folder / m["tokens"])
        self.pieces = is_piece_table(self.tokens)
        self.graph: Fsa | None = None
        self.words: SymbolTable | None = None
        if m.get("graph"):
            self.set_graph(self.folder / m["graph"])

    def set_graph(self, path: PathLike) -> None:
        """Decode with the graph file ``path`` (its words: the export's ``lang/words.txt``,
        else the graph's own output table)."""
        g = read_graph(path)
        words = self.folder / "lang" / "words.txt"
        table = SymbolTable.from_file(words) if self.manifest.get("lang") and words.is_file() \
            else getattr(g, "aux_labels_sym", None)
        if not isinstance(table, SymbolTable):
            raise ExportError(f"{path}: no words for its outputs (export with --lang-dir)")
        self.graph, self.words = g.to(self.device), table

    def read_audio(self, path: PathLike, warn: Callable[[str], None] | None = None
                   ) -> torch.Tensor:
        """float32 samples ``[N]`` of a mono audio file at the model's rate (lhotse's reader;
        resampled with lhotse's torch resampler, and ``warn`` told, when the rate differs).
        ValueError naming the file for anything that is not readable mono audio."""
        from lhotse import Recording
        from lhotse.augmentation.resample import Resample

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(2, "no such file" if not p.exists() else "not a file", str(p))
        try:
            rec = Recording.from_file(p)
            check_audio_length(rec.to_cut())
            samples = torch.from_numpy(rec.load_audio())
        except ValueError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(msg if str(p) in msg else f"{p}: {msg}") from None
        except Exception as e:  # noqa: BLE001 -- every backend's own error: not audio
            raise ValueError(f"{p}: not an audio file that can be read "
                             f"({type(e).__name__})") from None
        if samples.shape[0] != 1:
            raise ValueError(f"{p}: {samples.shape[0]} channels; transcribe takes mono audio")
        if samples.shape[1] == 0:
            raise ValueError(f"{p}: no samples")
        if rec.sampling_rate != self.sampling_rate:
            if warn is not None:
                warn(f"{p}: resampled from {rec.sampling_rate} Hz to {self.sampling_rate} Hz "
                     "(the model's rate)")
            samples = Resample(rec.sampling_rate, self.sampling_rate)(samples)
        return samples[0].float()

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """The training features ``[T, F]`` (float32, before CMVN) of samples ``[N]`` at
        :attr:`sampling_rate`."""
        return torch.from_numpy(self.extractor.extract(samples.numpy(), self.sampling_rate))

    @torch.no_grad()
    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """CTC log-probs ``[T', V]`` (float32, CPU) of one utterance's features ``[T, F]``:
        CMVN, then the network; ``[0, V]`` when the subsampled length is 0."""
        from wfst_asr.models.subsampling import subsampled_lengths

        n = torch.tensor([features.shape[0]])
        m = self.manifest
        if int(subsampled_lengths(n, m["subsampling_factor"], m["subsampling_mode"])) == 0:
            return torch.zeros(0, int(m["num_classes"]))
        x = apply_cmvn(features, *self.cmvn) if self.cmvn is not None else features
        lp, lens = self.model(x.unsqueeze(0).to(self.device), n.to(self.device))
        return lp[0, :int(lens[0])].float().cpu()

    def decode(self, log_probs: torch.Tensor, lm_scale: float | None = None,
               word_penalty: float | None = None) -> Transcript:
        """The 1-best of log-probs ``[T', V]``: the graph's best path (the engine search of
        :func:`~wfst_asr.decode.one_best`, settings of ``export.json`` unless given) or, without
        a graph, greedy CTC; words with times (blank frames at a word's end left out)."""
        T = int(log_probs.shape[0])
        if T == 0:
            return Transcript([], [], self.step)
        if self.graph is not None:
            d = self.manifest["decoding"]
            lat = get_lattice(self.graph, log_probs.unsqueeze(0).to(self.device), [T],
                              search_beam=d["search_beam"], output_beam=0.0,
                              max_active_states=d["max_active"],
                              lm_scale=d["lm_scale"] if lm_scale is None else lm_scale,
                              word_penalty=d["word_penalty"] if word_penalty is None
                              else word_penalty)
            path = best_paths(lat)
            labels, aux = path.labels.tolist(), path.aux_labels.tolist()
            frames = path.frame_idx.tolist()
            symbols = None
        else:
            best = log_probs.argmax(-1)
            prev = torch.cat([best.new_full((1,), -1), best[:-1]])
            labels = best.tolist()
            aux = torch.where((best != prev) & (best != 0), best, 0).tolist()
            frames = list(range(T))
            symbols = self.tokens
        spans = word_alignment(labels, aux, frames, T)
        if symbols is None:
            named = [(sp.start, sp.end, str(self.words.get(sp.word))) for sp in spans]
        elif self.pieces:
            named = _join_pieces(spans, [symbols[sp.word - 1] for sp in spans])
        else:
            named = [(sp.start, sp.end, symbols[sp.word - 1]) for sp in spans]
        return Transcript([w for _, _, w in named],
                          [WordSpan(k, s, e) for k, (s, e, _) in enumerate(named)], self.step)

    def transcribe(self, path: PathLike, warn: Callable[[str], None] | None = None,
                   lm_scale: float | None = None, word_penalty: float | None = None
                   ) -> Transcript:
        """Read, featurise, run and decode one audio file."""
        return self.decode(self.log_probs(self.features(self.read_audio(path, warn))),
                           lm_scale, word_penalty)


def load_exported(folder: PathLike, device: str | None = None) -> ExportedModel:
    """The export directory ``folder`` read back (default device: the export's)."""
    return ExportedModel(folder, device)
