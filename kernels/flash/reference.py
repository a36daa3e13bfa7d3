"""Plain-torch reference of flash attention: exact softmax attention."""

from __future__ import annotations

import torch

from lceval.kernels._reference import masked_softmax_attention, positions


def flash_attention_ref(q, k, v, causal=True, scale=None):
    qi, kj = positions(q.shape[2], k.shape[2], q.device)
    visible = kj <= qi if causal else torch.ones(qi.shape[0], kj.shape[1], dtype=torch.bool, device=q.device)
    return masked_softmax_attention(q, k, v, visible, scale)
