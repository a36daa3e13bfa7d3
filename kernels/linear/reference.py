"""Plain-torch reference of linear attention: the explicit normalized kernel matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lceval.kernels._reference import positions

PHI = {"elu1": lambda x: F.elu(x) + 1, "relu": F.relu, "softplus": F.softplus}


def linear_attention_ref(q, k, v, feature_map="elu1", causal=True):
    H = q.shape[1]
    k = k.repeat_interleave(H // k.shape[1], 1)
    v = v.repeat_interleave(H // v.shape[1], 1)
    phi = PHI[feature_map]
    a = phi(q.float()) @ phi(k.float()).transpose(-1, -2)  # (B, H, T, S)
    if causal:
        qi, kj = positions(q.shape[2], k.shape[2], q.device)
        a = a * (kj <= qi)
    den = a.sum(-1, keepdim=True)
    return ((a / torch.where(den > 0, den, torch.ones_like(den))) @ v.float()).to(q.dtype)
