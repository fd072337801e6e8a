"""DenseFsaVec: network output log-probs plus supervision segments."""

from __future__ import annotations

import torch


class DenseFsaVec:
    """Network output seen as a batch of dense, linear FSAs (one per supervision segment).

    Args:
      log_probs: float ``[B, T, V]``; column 0 is blank. Usually the output of log_softmax, but
        any scores work (they are added to graph scores, log semiring).
      supervision_segments: int32 ``[N, 3]`` rows of (sequence index, start frame, number of
        frames). Several segments may come from the same sequence.
      allow_truncate: frames to cut from a segment that runs past ``T`` (k2's option); 0 means
        such a segment is an error.

    Segment ``n`` covers frames ``start_n .. start_n + len_n - 1`` of sequence ``seq_n``; after
    its last frame a virtual frame consumes only label -1 with score 0, as in k2.
    """

    def __init__(self, log_probs: torch.Tensor, supervision_segments: torch.Tensor,
                 allow_truncate: int = 0) -> None:
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
        seg = torch.as_tensor(supervision_segments)
        if seg.dim() != 2 or seg.shape[1] != 3:
            raise ValueError(f"supervision_segments must be [N, 3], got {tuple(seg.shape)}")
        if seg.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"supervision_segments must be int32, got {seg.dtype}")
        seg = seg.to(device="cpu", dtype=torch.int64).clone()
        B, T, _ = log_probs.shape
        for i, (s, st, n) in enumerate(seg.tolist()):
            if not 0 <= s < B:
                raise ValueError(f"segment {i}: sequence index {s} out of range [0, {B})")
            if st < 0 or n < 0:
                raise ValueError(f"segment {i}: negative start or length ({st}, {n})")
            if st + n > T:
                if st + n - T <= allow_truncate:
                    seg[i, 2] = T - st
                else:
                    raise ValueError(f"segment {i}: frames {st}..{st + n - 1} run past T={T}")
        self.log_probs = log_probs
        self.segments = seg  # CPU int64 [N, 3]

    @property
    def num_segments(self) -> int:
        return self.segments.shape[0]

    @property
    def num_labels(self) -> int:
        """V, the number of output columns (labels 0..V-1)."""
        return self.log_probs.shape[2]

    @property
    def duration(self) -> torch.Tensor:
        """int64 ``[N]`` (CPU): number of frames of each segment."""
        return self.segments[:, 2]

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    def to(self, device) -> DenseFsaVec:
        return DenseFsaVec(self.log_probs.to(device), self.segments)

    def __repr__(self) -> str:
        return (f"DenseFsaVec(num_segments={self.num_segments}, "
                f"log_probs={tuple(self.log_probs.shape)}, device={self.device})")
