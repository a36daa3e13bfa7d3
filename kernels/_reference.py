"""Shared plain-torch pieces of the kernels' references (readable, not fast).

The softmax references run lceval's dense oracle (``lceval.attention.core``),
which the attention tests check against an independent float64 definition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lceval.attention.core import dense_attention


def positions(T: int, S: int, device) -> tuple[Tensor, Tensor]:
    """Absolute key-space positions: query i sits at i + S - T (bottom-right aligned)."""
    qi = torch.arange(T, device=device)[:, None] + (S - T)
    kj = torch.arange(S, device=device)[None, :]
    return qi, kj


def masked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, scale: float | None) -> Tensor:
    """softmax(q k^T * scale) v over visible pairs; rows with none visible give zeros.

    q (B, H, T, D); k, v (B, H_kv, S, D); visible broadcastable to (B, H, T, S).
    """
    return dense_attention(q, k, v, mask=lambda qi, kj: visible, scale=scale)
