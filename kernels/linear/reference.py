"""Plain-torch reference of linear attention: the explicit normalized kernel matrix."""

from __future__ import annotations

import torch

from lceval.attention.linear import FEATURE_MAPS
from lceval.kernels._reference import positions


def linear_attention_ref(q, k, v, feature_map="elu1", causal=True):
    H = q.shape[1]
    k = k.repeat_interleave(H // k.shape[1], 1)
    v = v.repeat_interleave(H // v.shape[1], 1)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    phi = FEATURE_MAPS[feature_map]
    a = phi(q.to(dt)) @ phi(k.to(dt)).transpose(-1, -2)  # (B, H, T, S)
    if causal:
        qi, kj = positions(q.shape[2], k.shape[2], q.device)
        a = a * (kj <= qi)
    den = a.sum(-1, keepdim=True)
    return ((a / torch.where(den > 0, den, torch.ones_like(den))) @ v.to(dt)).to(q.dtype)
