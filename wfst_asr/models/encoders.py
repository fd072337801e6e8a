"""Acoustic encoders: network input ``[B, T, F]`` features -> ``[B, T', V]`` log-probs.

Every encoder here has the same interface:

* ``forward(x [B, T, F], lens [B]) -> (log_probs [B, T', V], out_lens [B])``; ``log_probs``
  are ``log_softmax`` outputs (token 0 = blank), frames at and past ``out_lens[b]`` are padding;
* ``subsampling_factor`` and ``subsampling_mode``: the frame-rate rule in the terms of
  :func:`wfst_asr.models.subsampling.subsampled_lengths`, so that
  ``supervision_segments(batch, model)`` matches the model's output, and
  ``out_lens == model.output_lengths(lens)`` always;
* ``num_features``, ``num_classes`` (the output dimension V, blank included).

Padding never leaks into the valid frames: LSTMs run forward over the valid frames first and
backward over each sequence reversed in place (see ``_run_lstm``), and convolution outputs are
zeroed past each utterance's length before the next layer, so an utterance gives
the same outputs (eval mode) alone or in any padded batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from wfst_asr.models.subsampling import subsampled_lengths


def _mask(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Zero the frames ``t >= lens[b]`` of ``x [B, T, D]``."""
    t = torch.arange(x.shape[1], device=x.device)
    return x * (t.unsqueeze(0) < lens.to(x.device).unsqueeze(1)).unsqueeze(2).to(x.dtype)


def _reverse_each(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lens[b]`` frames of each ``x[b]`` (``[B, T, D]``); padding stays put.

    An involution: applying it twice gives ``x`` back.
    """
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    L = lens.to(x.device).unsqueeze(1)
    idx = torch.where(t < L, L - 1 - t, t)
    return x.gather(1, idx.unsqueeze(2).expand_as(x))


def _run_lstm(lstm: nn.LSTM, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """``lstm`` over the first ``lens[b]`` frames of each sequence of ``x [B, T, D]``; zeros after.

    The result equals running ``lstm`` on packed sequences, but each layer and direction runs
    on the padded batch, which keeps torch's fused CPU kernel (packed input falls back to a
    kernel about 8x slower in training): the forward direction reads the valid frames before
    any padding, and the backward direction runs on each sequence reversed in place (padding
    still after the valid frames) and is reversed back. Inter-layer dropout is applied as
    ``nn.LSTM`` does (between layers, in training). Zero-length sequences give zeros.
    ``lstm`` must be ``batch_first`` without projections.
    """
    if not lstm.batch_first or lstm.proj_size:
        raise ValueError("_run_lstm needs a batch_first nn.LSTM without proj_size")
    B, T, _ = x.shape
    if B == 0 or T == 0 or int(lens.max()) == 0:
        return x.new_zeros(B, T, lstm.hidden_size * (2 if lstm.bidirectional else 1))
    h0 = x.new_zeros(1, B, lstm.hidden_size)
    directions = ("", "_reverse") if lstm.bidirectional else ("",)
    for layer in range(lstm.num_layers):
        outs = []
        for sfx in directions:
            params = [getattr(lstm, f"{name}_l{layer}{sfx}")
                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[
                          :4 if lstm.bias else 2]]
            xi = _reverse_each(x, lens) if sfx else x
            y = torch.lstm(xi, (h0, h0), params, lstm.bias, 1, 0.0, lstm.training, False,
                           True)[0]
            outs.append(_reverse_each(y, lens) if sfx else y)
        x = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        if layer < lstm.num_layers - 1 and lstm.dropout > 0:
            x = nn.functional.dropout(x, lstm.dropout, lstm.training)
    return _mask(x, lens)


class Encoder(nn.Module):
    """Base class: holds the sizes and the subsampling rule (see the module doc)."""

    subsampling_factor: int = 1
    subsampling_mode: str = "floor"

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        if num_features < 1 or num_classes < 2:
            raise ValueError(f"need num_features >= 1 and num_classes >= 2 (blank + a token), "
                             f"got {num_features}, {num_classes}")
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Output frames for ``lens`` input frames: ``subsampled_lengths(lens, factor, mode)``."""
        return subsampled_lengths(lens, self.subsampling_factor, self.subsampling_mode)

    def _check_input(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected input [B, T, {self.num_features}],"
                             f" got {tuple(x.shape)}")
        lens = torch.as_tensor(lens, device=x.device).to(torch.int64)
        if lens.shape != (x.shape[0],):
            raise ValueError(f"lens must be [B]={x.shape[0]}, got {tuple(lens.shape)}")
        if bool((lens < 0).any()) or bool((lens > x.shape[1]).any()):
            raise ValueError(f"lens must lie in [0, T={x.shape[1]}], got {lens.tolist()}")
        return lens


class Blstm(Encoder):
    """Stacked bidirectional LSTM with optional frame subsampling (Tang et al. 2016 style).

    Args:
      num_features: input feature dimension F.
      num_classes: output dimension V (blank = 0 included).
      hidden: LSTM cells per direction.
      num_layers: number of BLSTM layers.
      dropout: dropout on the output of every BLSTM layer.
      subsampling: frame subsampling factor s in 1..4 (1 = none).
      subsample_type: ``"concat"`` concatenates ``s`` consecutive frames into one (a trailing
        incomplete group is dropped: mode ``"floor"``); ``"stride"`` keeps every ``s``-th frame,
        starting at 0 (mode ``"ceil"``).
      subsample_after: where subsampling happens: 0 = on the input features, ``k`` = between
        BLSTM layer ``k`` and ``k+1`` (a pyramidal BLSTM: the first layers see every frame).
        Defaults to 1 when there are at least 2 layers, else 0.

    Rule: ``subsampling_factor = subsampling``; ``subsampling_mode = "floor"`` for concat,
    ``"ceil"`` for stride.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 256,
                 num_layers: int = 3, dropout: float = 0.2, subsampling: int = 1,
                 subsample_type: str = "concat", subsample_after: int | None = None) -> None:
        super().__init__(num_features, num_classes)
        if subsampling not in (1, 2, 3, 4):
            raise ValueError(f"subsampling must be 1, 2, 3 or 4, got {subsampling}")
        if subsample_type not in ("concat", "stride"):
            raise ValueError(f"subsample_type must be 'concat' or 'stride', got {subsample_type!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if subsample_after is None:
            subsample_after = 1 if num_layers >= 2 else 0
        if not 0 <= subsample_after < num_layers:
            raise ValueError(f"subsample_after must be in [0, {num_layers}), got {subsample_after}")
        self.subsampling_factor = int(subsampling)
        self.subsampling_mode = "floor" if subsample_type == "concat" else "ceil"
        self.subsample_type = subsample_type
        self.subsample_after = subsample_after
        self.layers = nn.ModuleList()
        in_dim = num_features
        for i in range(num_layers):
            if i == subsample_after and subsample_type == "concat":
                in_dim *= subsampling
            self.layers.append(nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True))
            in_dim = 2 * hidden
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * hidden, num_classes)

    def _subsample(self, x: torch.Tensor, lens: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.subsampling_factor
        if s == 1:
            return x, lens
        B, T, D = x.shape
        if self.subsample_type == "stride":
            return x[:, ::s], self.output_lengths(lens).to(lens.device)
        Tq = T // s
        return (x[:, :Tq * s].reshape(B, Tq, s * D),
                self.output_lengths(lens).to(lens.device))

    def logits(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without the final log-softmax: (``output(h)`` ``[B, T', V]``,
        ``out_lens [B]``), e.g. the encoder output of a transducer (V = its dimension)."""
        lens = self._check_input(x, lens)
        for i, lstm in enumerate(self.layers):
            if i == self.subsample_after:
                x, lens = self._subsample(x, lens)
            x = self.dropout(_run_lstm(lstm, x, lens))
        return self.output(x), lens

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, F]``, ``lens [B]`` -> (log-probs ``[B, T', V]``, ``out_lens [B]``)."""
        scores, lens = self.logits(x, lens)
        return scores.log_softmax(-1), lens


class TdnnLstm(Encoder):
    """TDNN layers (dilated 1-D convolutions) followed by an LSTM and a linear output.

    Each TDNN layer is ``Conv1d(kernel, dilation, "same" padding) -> ReLU -> LayerNorm ->
    dropout``, with its output zeroed past each utterance's end. The last TDNN layer has stride
    ``subsampling``, so the output has ``ceil(T / s)`` frames (mode ``"ceil"``).

    Args:
      num_features: input feature dimension F.
      num_classes: output dimension V (blank = 0 included).
      tdnn_dim: channels of every TDNN layer.
      dilations: one TDNN layer per entry, with that dilation.
      kernel_size: odd kernel size of every TDNN layer.
      lstm_hidden: LSTM cells (per direction).
      lstm_layers: LSTM layers.
      bidirectional: bidirectional LSTM (offline recipes) or not.
      dropout: dropout after each TDNN layer and on the LSTM output.
      subsampling: frame subsampling factor s >= 1 (the stride of the last TDNN layer).
    """

    def __init__(self, num_features: int, num_classes: int, tdnn_dim: int = 256,
                 dilations: Sequence[int] = (1, 1, 2, 3), kernel_size: int = 3,
                 lstm_hidden: int = 256, lstm_layers: int = 2, bidirectional: bool = False,
                 dropout: float = 0.1, subsampling: int = 1) -> None:
        super().__init__(num_features, num_classes)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if len(dilations) < 1 or min(dilations) < 1:
            raise ValueError(f"dilations must be a non-empty list of ints >= 1, got {dilations}")
        if subsampling < 1:
            raise ValueError(f"subsampling must be >= 1, got {subsampling}")
        self.subsampling_factor = int(subsampling)
        self.subsampling_mode = "ceil"
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_dim = num_features
        for i, d in enumerate(dilations):
            stride = subsampling if i == len(dilations) - 1 else 1
            self.convs.append(nn.Conv1d(in_dim, tdnn_dim, kernel_size, stride=stride,
                                        dilation=d, padding=d * (kernel_size - 1) // 2))
            self.norms.append(nn.LayerNorm(tdnn_dim))
            in_dim = tdnn_dim
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(tdnn_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=bidirectional,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        self.output = nn.Linear(lstm_hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, F]``, ``lens [B]`` -> (log-probs ``[B, T', V]``, ``out_lens [B]``)."""
        lens = self._check_input(x, lens)
        x = _mask(x, lens)
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(torch.relu(conv(x.transpose(1, 2)).transpose(1, 2)))
            if i == last:
                lens = self.output_lengths(lens).to(lens.device)
            x = _mask(self.dropout(x), lens)
        x = self.dropout(_run_lstm(self.lstm, x, lens))
        return self.output(x).log_softmax(-1), lens


#: name -> encoder class (or factory ``(num_features, num_classes, **kw) -> nn.Module``).
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module] | None = None):
    """Register ``factory`` under ``name`` for :func:`build_model` (usable as a decorator)."""
    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name] is not f:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = f
        return f
    return add(factory) if factory is not None else add


register_model("blstm", Blstm)
register_model("tdnn_lstm", TdnnLstm)


def build_model(name: str, num_features: int, num_classes: int, num_tokens: int | None = None,
                **kw) -> nn.Module:
    """Build the registered model ``name`` (see :data:`MODELS`) with keyword options ``kw``.

    With ``num_tokens`` (blank included), also :func:`check_output_dim` the result.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    model = MODELS[name](num_features, num_classes, **kw)
    if num_tokens is not None:
        check_output_dim(model, num_tokens)
    return model


def _output_dim(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is not None:
        return int(n)
    out = getattr(model, "output", None)
    if isinstance(out, nn.Linear):
        return out.out_features
    raise ValueError(f"cannot tell the output dimension of {type(model).__name__}: give it a "
                     f"num_classes attribute")


def check_output_dim(model: nn.Module, num_tokens: int | Sequence) -> None:
    """Raise ``ValueError`` unless the model's output dimension equals ``num_tokens``.

    ``num_tokens`` is the number of network outputs the graphs expect, blank (id 0) included,
    e.g. ``max token id + 1`` of a tokens.txt; a sized collection (token list, symbol table)
    is taken by its ``len()``.
    """
    n = num_tokens if isinstance(num_tokens, int) else len(num_tokens)
    v = _output_dim(model)
    if v != n:
        raise ValueError(
            f"{type(model).__name__} has {v} outputs but there are {n} tokens (blank included);"
            f" build it with num_classes={n} (tokens.txt: max id + 1)")
