"""A decode directory (what ``wfst-asr decode`` writes, ``wfst-asr score`` reads), and its
scoring (:func:`score_decode_dir`), as Kaldi splits decoding and scoring.

Layout of ``OUT``::

    ref/<set>.ref          references, Kaldi ``text`` (``utt w1 w2 ...``)
    ref/<set>.utt2spk      their speakers (utterances without one are left out)
    <method>/<set>.hyp     1-best hypotheses in the method's output symbols, before any folding
    <method>/sweep_<tune set>.txt   the grid of a tuned method (lm_scale x word_penalty)
    settings.json          what was decoded how (:data:`SETTINGS`), read back by scoring

and, once scored, ``<metric>_<method>_<set>.txt`` (Kaldi-style reports with a per-speaker
breakdown, :meth:`~.edit_distance.ScoreReport.write`) and ``results.txt``.

``settings.json``: ``{"sets": [set, ...], "tune_set": ..., "metric": ..., "map": {"file",
"from", "to"} | null, "model": {...}, "methods": {method: {"setting": {"lm_scale": ..,
"word_penalty": ..} | null, "how": "one line", "compare_with": other method | absent, ...}}}``
(method order = decoding order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..atomic import read_text as read_utf8
from .edit_distance import ScoreReport
from .text import Fold, read_text, read_utt2spk, score_texts

__all__ = ["SETTINGS", "hyp_path", "read_settings", "ref_path", "score_decode_dir",
           "utt2spk_path", "write_settings"]

PathLike = str | os.PathLike

#: The settings file of a decode directory.
SETTINGS = "settings.json"


def ref_path(out_dir: PathLike, name: str) -> Path:
    return Path(out_dir) / "ref" / f"{name}.ref"


def utt2spk_path(out_dir: PathLike, name: str) -> Path:
    return Path(out_dir) / "ref" / f"{name}.utt2spk"


def hyp_path(out_dir: PathLike, method: str, name: str) -> Path:
    return Path(out_dir) / method / f"{name}.hyp"


def write_settings(out_dir: PathLike, settings: dict[str, Any]) -> None:
    atomic_write_text(Path(out_dir) / SETTINGS, json.dumps(settings, indent=1) + "\n")


def read_settings(out_dir: PathLike) -> dict[str, Any]:
    """``settings.json`` of ``out_dir``, or what the files say without it (sets: the
    ``ref/*.ref``, methods: the folders with ``.hyp`` files, in name order); ValueError for a
    folder without references."""
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"{out}: no such decode directory")
    path = out / SETTINGS
    if path.is_file():
        try:
            settings = json.loads(read_utf8(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column "
                             f"{e.colno})") from None
        if not isinstance(settings, dict) or not isinstance(settings.get("sets"), list) \
                or not isinstance(settings.get("methods", {}), dict):
            raise ValueError(f"{path}: not the settings of a decode directory (a JSON object "
                             "with a list 'sets' and an object 'methods')")
        return settings
    sets = sorted(p.stem for p in (out / "ref").glob("*.ref"))
    if not sets:
        raise ValueError(f"{out}: no {SETTINGS} and no ref/*.ref (not a decode directory)")
    methods = sorted(p.name for p in out.iterdir()
                     if p.is_dir() and p.name != "ref" and any(p.glob("*.hyp")))
    return {"sets": sets, "methods": {m: {} for m in methods}}


def _setting_text(info: dict[str, Any]) -> str:
    s = info.get("setting")
    return ", ".join(f"{k} {v:g}" for k, v in s.items()) if s else ""


def score_decode_dir(out_dir: PathLike, metric: str | None = None, fold: Fold | None = None,
                     log: Callable[[str], None] | None = None
                     ) -> tuple[dict[str, dict[str, ScoreReport]], str]:
    """Score every ``<method>/<set>.hyp`` of a decode directory against ``ref/<set>.ref``
    (:func:`~.text.score_texts`; ``metric`` and ``fold`` default to those of
    ``settings.json``, else WER and none) and write ``<metric>_<method>_<set>.txt`` and
    ``results.txt`` (atomically): one line per method x set with its setting, then the share of
    identical 1-best hypotheses of each method and the one it is compared with
    (``compare_with``: Kaldi's decoder against the engine) on each set but the tune set.

    Returns ``({method: {set: report}}, results text)``. ValueError for a missing reference
    or a hypothesis without one.
    """
    out = Path(out_dir)
    settings = read_settings(out)
    metric = (metric or settings.get("metric") or "WER").upper()
    if fold is None and settings.get("map"):
        m = settings["map"]
        fold = Fold.load(m["file"], m["from"], m["to"])
    sets: Sequence[str] = settings["sets"]
    refs, spk = {}, {}
    for name in sets:
        if not ref_path(out, name).is_file():
            raise ValueError(f"{ref_path(out, name)}: no such reference file")
        refs[name] = read_text(ref_path(out, name))
        p = utt2spk_path(out, name)
        spk[name] = read_utt2spk(p) if p.is_file() else {}
    model = settings.get("model") or {}
    what = f"%{metric}" + (f" ({fold.describe()})" if fold is not None else "")
    lines = [f"{what} of {model.get('checkpoint', out)}" +
             (f" ({model['describe']})" if model.get("describe") else "")]
    if model.get("prior"):
        lines.append(model["prior"])
    methods: dict[str, dict[str, Any]] = settings.get("methods") or {}
    for method, info in methods.items():
        if info.get("how"):
            lines.append(f"{method}: {info['how']}")
    reports: dict[str, dict[str, ScoreReport]] = {}
    hyps: dict[tuple[str, str], dict[str, list[str]]] = {}
    width = max([len(m) for m in methods] + [6])
    for method, info in methods.items():
        for name in sets:
            p = hyp_path(out, method, name)
            if not p.is_file():
                continue
            hyps[method, name] = read_text(p)
            try:
                rep = score_texts(refs[name], hyps[method, name], spk[name], metric, fold)
            except ValueError as e:
                raise ValueError(f"{p}: {e}") from e
            reports.setdefault(method, {})[name] = rep
            dst = out / f"{metric.lower()}_{method}_{name}.txt"
            rep.write(dst)
            setting = _setting_text(info)
            lines.append(f"{method:{width}s} {name:4s} {metric} {rep.rate:6.2f}%  "
                         f"({rep.summary()})" + (f"  {setting}" if setting else ""))
            if log is not None:
                log(lines[-1])
    for method, info in methods.items():
        other = info.get("compare_with")
        for name in sets:
            if not other or name == settings.get("tune_set") or (method, name) not in hyps \
                    or (other, name) not in hyps:
                continue
            a, b = hyps[other, name], hyps[method, name]
            same = sum(a[u] == b.get(u) for u in a)
            lines.append(f"{name} utterances where {other} and {method} agree: {same}/{len(a)} "
                         f"({100.0 * same / max(len(a), 1):.1f}%)")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.txt", text)
    return reports, text
