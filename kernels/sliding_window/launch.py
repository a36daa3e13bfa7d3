"""Sliding-window attention launcher: visits only the key tiles that intersect the window."""

from __future__ import annotations

from lceval.kernels.flash.kernel import MODE_WINDOW
from lceval.kernels.flash.launch import launch


def sliding_window_attention(q, k, v, window, scale=None, causal=True, return_lse=False):
    """Causal: query i sees keys i - W < j <= i. Work grows with T x W, not T x S."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return launch(q, k, v, mode=MODE_WINDOW, causal=causal, scale=scale, window=int(window), return_lse=return_lse)
