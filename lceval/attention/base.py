"""The attention backend interface every variant implements."""

from __future__ import annotations

import os
from typing import ClassVar

import pydantic
import torch
from torch import Tensor

from lceval.attention.cache import LayerCache
from lceval.attention.core import MaskFn, ScoreMod, causal_mask, dense_scores, grouped_values, safe_softmax


class NoParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Attention:
    """One attention variant with its parameters.

    ``attn(q, k, v, causal=True)`` returns (B, H, T, D);
    ``attn.weights(q, k, v, causal=True, rows=slice(a, b))`` returns the
    normalized weights (B, H, b - a, S) of those query rows (``rows`` may also
    be a list or tensor of row numbers); memory O(rows x S).
    ``attn.last_impl`` names the implementation the last call ran.
    """

    name: ClassVar[str]
    Params: ClassVar[type[pydantic.BaseModel]] = NoParams
    supports_score_mod: ClassVar[bool] = True
    #: the cache keeps a recurrent state instead of the keys (an attention capture cannot read back over it)
    recurrent: ClassVar[bool] = False
    #: the output is exactly the softmax weights times the values, over every key (full, flash): a call whose
    #: weights a capture computed can take its output from them (``from_weights``)
    weights_times_values: ClassVar[bool] = False

    def __init__(self, **params):
        self.params = self.Params(**params)
        self.last_impl: str | None = None

    # -- identity -----------------------------------------------------------------------
    @property
    def label(self) -> str:
        args = ",".join(f"{_short(k)}={v}" for k, v in self.params.model_dump(exclude_defaults=True).items())
        return f"{self.name}({args})" if args else self.name

    def __repr__(self) -> str:
        return f"<attention {self.label}>"

    # -- the math -----------------------------------------------------------------------
    def mask(self, causal: bool) -> MaskFn | None:
        """Visibility of (query, key) pairs as a pure function; the oracle's definition."""
        return causal_mask if causal else None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                 score_mod: ScoreMod | None = None, scale: float | None = None) -> Tensor:
        raise NotImplementedError

    def cached(self, cache: LayerCache, q: Tensor, k: Tensor, v: Tensor, score_mod: ScoreMod | None = None,
               scale: float | None = None) -> Tensor:
        """Causal attention of new queries over the cached keys plus the new ones; extends the cache.

        q (B, H, T, D) and k, v (B, H_kv, T, D) are the T newest tokens, position-encoded.
        Softmax variants append k, v and attend bottom-right aligned (query i sits at key
        position i + S - T), which is what recomputing the whole sequence would give.
        """
        kk, vv = cache.append(k, v)
        return self(q, kk, vv, causal=True, score_mod=score_mod, scale=scale)

    def weights(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = True, rows=None,
                score_mod: ScoreMod | None = None, scale: float | None = None) -> Tensor:
        s = dense_scores(q, k, mask=self.mask(causal), score_mod=score_mod, scale=scale, rows=rows)
        return safe_softmax(s).to(q.dtype)

    def from_weights(self, w: Tensor, v: Tensor) -> Tensor | None:
        """The output (B, H, T, D) of a call whose weights (B, H, T, S) over every query row were already computed
        (``weights``, by an attention capture): the weights times the values, as the oracle computes it, for a
        variant whose output is exactly that (``weights_times_values``) and weights in the values' own dtype (float32;
        a capture's float32 weights of a 16-bit or float64 model would round differently). None otherwise: the call
        then runs as usual. A decoding step of the diagnosis thus reads the keys once, not twice."""
        ok = self.weights_times_values and w.dtype == v.dtype == torch.float32
        return grouped_values(w, v) if ok else None

    def score_bytes(self, batch: int, heads: int, t: int, s: int, itemsize: int = 4) -> int:
        """Peak bytes of attention scratch for one call (quadratic variants only)."""
        return 0


def _short(key: str) -> str:
    return {"window": "w", "block": "b", "local_blocks": "local", "global_blocks": "global"}.get(key, key)


def use_triton(q: Tensor, k: Tensor, v: Tensor, score_mod) -> bool:
    """Whether a backend should call its Triton kernel for this call.

    Yes on CUDA tensors of a supported dtype and head dim, without a score bias,
    when no gradient is needed (the kernels are forward-only). ``LCEVAL_TRITON=off``
    disables the kernels; ``LCEVAL_TRITON=force`` uses them on any device (for
    testing on a CPU under ``TRITON_INTERPRET=1``). CPU runs never use them otherwise.
    """
    mode = os.environ.get("LCEVAL_TRITON", "auto")
    if mode == "off" or score_mod is not None:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not 16 <= q.shape[-1] <= 128:
        return False
    if mode == "force":
        return True
    from lceval import kernels

    return q.is_cuda and kernels.available()
