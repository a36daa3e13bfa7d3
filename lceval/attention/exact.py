"""The exact variants: ``full`` (eager math, the oracle) and ``flash`` (tiled, O(n) memory)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from lceval.attention.base import Attention, use_triton
from lceval.attention.core import blocked_attention, dense_attention, dense_key_blocks, repeat_kv


class FullAttention(Attention):
    """Plain softmax(QK^T/sqrt(d))V with the whole score matrix: O(T*S) memory by design."""

    name = "full"
    quadratic_memory = True

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        self.last_impl = "torch.eager"
        return dense_attention(q, k, v, mask=self.mask(causal), score_mod=score_mod, scale=scale)

    def score_bytes(self, batch, heads, t, s, itemsize=4):
        # up to four score-sized tensors live at once in the eager path (scores, masked copy, exp, weights);
        # measured: 433 MiB peak for one 4k-token forward with 2 heads, where one score matrix is 128 MiB
        return 4 * batch * heads * t * s * itemsize


class FlashAttention(Attention):
    """Exact attention without the score matrix.

    Runs torch's fused ``scaled_dot_product_attention`` (flash backend) when the
    call is plain (no score mod, square causal or non-causal), else lceval's
    blocked online-softmax path. Both are O(n) memory.
    """

    name = "flash"
    block = 512

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if use_triton(q, k, v, score_mod):
            from lceval.kernels import flash_attention

            self.last_impl = "triton"
            return flash_attention(q, k, v, causal=causal, scale=scale)
        if score_mod is None and (not causal or T == S):
            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    out = torch.nn.functional.scaled_dot_product_attention(
                        q, repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1]), is_causal=causal, scale=scale
                    )
                self.last_impl = "torch.sdpa_flash"
                return out
            except RuntimeError:
                pass  # flash backend not available for this input: use the blocked path
        self.last_impl = "torch.blocked"
        blocks = dense_key_blocks(S, self.block, causal=causal, offset=S - T)
        return blocked_attention(q, k, v, key_blocks=blocks, mask=self.mask(causal),
                                 score_mod=score_mod, scale=scale, block_q=self.block)
