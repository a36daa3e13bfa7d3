"""Plain-torch reference of sliding-window attention."""

from __future__ import annotations

from lceval.kernels._reference import masked_softmax_attention, positions


def sliding_window_attention_ref(q, k, v, window, causal=True, scale=None):
    """Causal: i - W < j <= i (W keys, itself included). Non-causal: |i - j| < W."""
    qi, kj = positions(q.shape[2], k.shape[2], q.device)
    visible = ((kj <= qi) & (kj > qi - window)) if causal else (qi - kj).abs() < window
    return masked_softmax_attention(q, k, v, visible, scale)
