"""Plain-torch reference of sliding-window attention: the dense oracle with the window's mask."""

from __future__ import annotations

from lceval.attention.core import dense_attention, window_mask


def sliding_window_attention_ref(q, k, v, window, causal=True, scale=None):
    """Causal: i - W < j <= i (W keys, itself included). Non-causal: |i - j| < W."""
    return dense_attention(q, k, v, mask=window_mask(window, causal), scale=scale)
