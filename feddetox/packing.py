"""Packed rows: several segments in one row of tokens, each seeing only itself, for training and scoring.

A segment is a shared context followed by branches (a prompt then its chosen and rejected answers; a
question then its choices). Every branch sees the context and itself, never a sibling branch or another
segment, and its positions continue from the context's end: each token then sees exactly what it would see
in a row of its own, and the context is computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def first_fit_rows(lengths: Sequence[int], capacity: int | None = None) -> list[list[int]]:
    """Segment indices per row: first fit, longest first, each row at most `capacity` tokens (default the
    longest segment; a segment longer than `capacity` gets a row of its own)."""
    capacity = max(lengths, default=0) if capacity is None else capacity
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max(capacity, lengths[i]) - lengths[i])
    return rows


def segment_mask(segment: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """(R, 1, L, L) bool attention mask, True = may attend, for rows of packed segments.

    segment: (R, L) the segment of each position, -1 for padding; part: (R, L) 0 for a segment's context,
    k > 0 for its k-th branch. A position attends causally within its segment to the context and to its
    own branch; padding attends to itself only (no softmax row is empty).
    """
    width = segment.shape[1]
    q_part, k_part = part.unsqueeze(2), part.unsqueeze(1)  # (R, L, 1), (R, 1, L)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (segment.unsqueeze(1) >= 0)
    allowed = same & causal & ((k_part == 0) | (k_part == q_part))
    allowed |= torch.eye(width, dtype=torch.bool)
    return allowed.unsqueeze(1)
