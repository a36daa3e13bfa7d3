"""Plain-torch reference of linear attention: lceval's naive oracle (the explicit normalized kernel matrix)."""

from __future__ import annotations

from lceval.attention.linear import naive_linear_attention


def linear_attention_ref(q, k, v, feature_map="elu1", causal=True):
    return naive_linear_attention(q, k, v, feature_map, causal)
