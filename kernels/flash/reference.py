"""Plain-torch reference of flash attention: the dense oracle with the causal mask (or none)."""

from __future__ import annotations

from lceval.attention.core import causal_mask, dense_attention


def flash_attention_ref(q, k, v, causal=True, scale=None):
    return dense_attention(q, k, v, mask=causal_mask if causal else None, scale=scale)
