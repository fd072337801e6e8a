"""The dev-set grid search of decoding settings: LM scale x word (phone) insertion penalty,
optionally times further scales (a neural LM's, ...), with one tie-break rule.

::

    def dev_error(lm_scale: float, word_penalty: float) -> float:
        ...                                      # decode dev at this setting, score it

    res = grid_search(dev_error, [0.1, 0.3, 1.0], [-1, 0, 1])
    res.best                                     # {"lm_scale": 0.3, "word_penalty": 0.0}
    res.error                                    # its dev error
    print(res.format_table(), end="")            # every setting, the best one marked

    # with a neural LM scale: evaluate(lm_scale=, word_penalty=, nnlm_scale=)
    res = grid_search(evaluate, [0.5, 1], [0], extra={"nnlm_scale": [0, 0.5, 1]})

**Sweep order**: ``lm_scale`` outermost, then ``word_penalty``, then each extra scale in the
order of ``extra`` (the last innermost).

**Tie-break** (the rule that chose the published TIMIT settings): the lowest error; among equal
errors the smallest ``lm_scale``, then the smallest ``|word_penalty|``, then the smaller
``word_penalty`` (-1 before 1), then the smallest extra scales (compared in the order of
``extra``); a setting listed twice counts once, at its first place in sweep order. Errors are
compared exactly (the same error counts over the same references give the same rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["GridResult", "grid_search", "parse_grid"]

LM_SCALE = "lm_scale"
WORD_PENALTY = "word_penalty"


def parse_grid(text: str) -> list[float]:
    """The values of a comma-separated grid option (``"0.1,0.3,1"``; empty items ignored)."""
    return [float(x) for x in text.split(",") if x.strip()]


@dataclass(frozen=True)
class GridResult:
    """What :func:`grid_search` found.

    ``names`` are the grid's axes (``lm_scale``, ``word_penalty``, then the extra scales);
    ``table`` has one row per setting in sweep order: its values in ``names`` order, then its
    error; ``best_index`` is the best row's place in ``table``; ``metric`` names the error in
    :meth:`format_table`."""

    names: tuple[str, ...]
    table: tuple[tuple[float, ...], ...]
    best_index: int
    metric: str = "ER"

    @property
    def best(self) -> dict[str, float]:
        """The best setting, ``{name: value}`` in ``names`` order."""
        return dict(zip(self.names, self.table[self.best_index]))

    @property
    def error(self) -> float:
        """The best setting's error."""
        return self.table[self.best_index][-1]

    @property
    def lm_scale(self) -> float:
        return self.best[LM_SCALE]

    @property
    def word_penalty(self) -> float:
        return self.best[WORD_PENALTY]

    def as_dict(self) -> dict[str, float]:
        """The best setting and ``"error"``: its error (e.g. for a JSON file)."""
        return {**self.best, "error": self.error}

    def describe(self) -> str:
        """The best setting as text: ``lm_scale 0.3, word_penalty 0[, nnlm_scale 0.5]``."""
        return ", ".join(f"{k} {v:g}" for k, v in self.best.items())

    def format_table(self) -> str:
        """The whole table as text: a header line (the names, ``%<metric>``), then one line per
        setting in sweep order, the best one marked ``<- best``; each line ends with a
        newline."""
        widths = [max(9, len(n)) for n in self.names]
        head = " ".join(f"{n:>{w}}" for n, w in zip(self.names, widths))
        lines = [f"{head} {'%' + self.metric:>8}"]
        for i, row in enumerate(self.table):
            vals = " ".join(f"{v:{w}.3g}" for v, w in zip(row[:-1], widths))
            lines.append(f"{vals} {row[-1]:8.2f}{'  <- best' if i == self.best_index else ''}")
        return "\n".join(lines) + "\n"


def _tie_key(row: tuple[float, ...]) -> tuple[float, ...]:
    lm_scale, wp, *extra = row[:-1]
    return (row[-1], lm_scale, abs(wp), wp, *extra)


def grid_search(evaluate: Callable[..., float], lm_scales: Sequence[float],
                word_penalties: Sequence[float],
                extra: Mapping[str, Sequence[float]] | None = None,
                log: Callable[[str], None] | None = None, metric: str = "ER") -> GridResult:
    """Evaluate every setting of ``lm_scales`` x ``word_penalties`` (x each ``extra`` axis) and
    return the best (the module doc gives the sweep order and the tie-break).

    Args:
      evaluate: ``evaluate(lm_scale=..., word_penalty=..., **{name: value for each extra
        axis}) -> error`` (lower is better, e.g. a dev error rate in percent), called once per
        setting, in sweep order, with float values.
      lm_scales, word_penalties: the values of the two main axes.
      extra: further axes, ``{name: values}`` (e.g. ``{"nnlm_scale": [0, 0.5, 1]}``); a name
        may not be ``lm_scale``, ``word_penalty`` or ``error``.
      log: called with one line per setting after its evaluation (``lm_scale 0.3,
        word_penalty 0: %ER 12.34``); ``None``: silent.
      metric: the name of the error (log lines, :meth:`GridResult.format_table`).

    Raises:
      ValueError: an empty axis (empty grid), a reserved or repeated extra name, or an
        ``evaluate`` result that is NaN.
    """
    axes: dict[str, list[float]] = {LM_SCALE: [float(v) for v in lm_scales],
                                    WORD_PENALTY: [float(v) for v in word_penalties]}
    for name, values in (extra or {}).items():
        if name in axes or name == "error":
            raise ValueError(f"grid_search: extra axis name {name!r} is reserved or repeated")
        axes[name] = [float(v) for v in values]
    empty = [n for n, v in axes.items() if not v]
    if empty:
        raise ValueError(f"grid_search: empty grid (no {', '.join(empty)} values)")
    names = tuple(axes)
    settings: list[tuple[float, ...]] = [()]
    for values in axes.values():  # the first axis outermost
        settings = [s + (v,) for s in settings for v in values]
    table: list[tuple[float, ...]] = []
    for values in settings:
        kw = dict(zip(names, values))
        err = float(evaluate(**kw))
        if math.isnan(err):
            raise ValueError(f"grid_search: the error at {kw} is NaN")
        table.append((*values, err))
        if log is not None:
            log(", ".join(f"{k} {v:g}" for k, v in kw.items()) + f": %{metric} {err:.2f}")
    best = min(range(len(table)), key=lambda i: (_tie_key(table[i]), i))
    return GridResult(names, tuple(table), best, metric)
