"""Shared plain-torch pieces of the kernels' references (readable, not fast)."""

from __future__ import annotations

import torch
from torch import Tensor


def positions(T: int, S: int, device) -> tuple[Tensor, Tensor]:
    """Absolute key-space positions: query i sits at i + S - T (bottom-right aligned)."""
    qi = torch.arange(T, device=device)[:, None] + (S - T)
    kj = torch.arange(S, device=device)[None, :]
    return qi, kj


def masked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, scale: float | None) -> Tensor:
    """softmax(q k^T * scale) v over visible pairs; rows with none visible give zeros.

    q (B, H, T, D); k, v (B, H_kv, S, D); visible broadcastable to (B, H, T, S).
    """
    H = q.shape[1]
    k = k.repeat_interleave(H // k.shape[1], 1)
    v = v.repeat_interleave(H // v.shape[1], 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~visible, float("-inf"))
    w = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return w @ v
