"""Plain-torch reference of block-sparse attention."""

from __future__ import annotations

import torch

from lceval.kernels._reference import masked_softmax_attention, positions


def expand_layout(layout, block: int, T: int, S: int):
    """(H or 1, ceil(T/block), ceil(S/block)) bool -> (H or 1, T, S) element visibility."""
    rows = torch.arange(T, device=layout.device) // block
    cols = torch.arange(S, device=layout.device) // block
    return layout[:, rows][:, :, cols]


def block_sparse_attention_ref(q, k, v, layout, block, causal=True, scale=None):
    """Query block m sees key block n where layout[h, m, n]; causal (bottom-right) inside."""
    T, S = q.shape[2], k.shape[2]
    visible = expand_layout(layout.bool(), block, T, S)[None]  # (1, H or 1, T, S)
    if causal:
        qi, kj = positions(T, S, q.device)
        visible = visible & (kj <= qi)
    return masked_softmax_attention(q, k, v, visible, scale)
