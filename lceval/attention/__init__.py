"""Attention variants behind one call signature.

>>> from lceval.attention import build_attention
>>> attn = build_attention("full")
>>> out = attn(q, k, v, causal=True)   # q (B,H,T,D); k, v (B,H_kv,S,D) -> (B,H,T,D)

Attention capture (``lceval.attention.capture``): the normalized weights of
chosen query rows, per layer and head, recorded during a model's forward pass
for every variant (linear: its explicit normalized phi(q).phi(k) matrix), in
O(rows x S) memory:

>>> from lceval.attention.capture import capturing
>>> with capturing(model, rows=[120, 121]) as cap:
...     model.hidden(ids)
>>> cap.weights[layer]                 # (B, H, 2, S); cap.stacked(): (L, B, H, 2, S)
"""

from __future__ import annotations

import pydantic

from lceval import registry
from lceval.attention.base import Attention
from lceval.errors import UserError


def build_attention(name: str, **params) -> Attention:
    """Build a registered attention variant with its parameters."""
    cls = registry.attention.get(name)
    try:
        return cls(**params)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise UserError(f"attention {name!r} parameter {key}: {err['msg']}") from None


__all__ = ["Attention", "build_attention"]
