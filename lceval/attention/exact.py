"""The exact variants: ``full`` (eager math, the oracle) and ``flash`` (tiled, O(n) memory)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from lceval.attention.base import Attention, use_triton
from lceval.attention.core import blocked_attention, dense_attention, dense_key_blocks


def fused(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None, masked: int) -> Tensor | None:
    """torch's flash SDPA for q (B, H, T, D) over k, v (B, H_kv, S, D), bottom-right causal; None where it cannot run.

    T == S: the kernel's own causal flag. Not causal, or T == 1 (every key is visible): one call with a group's
    query heads as rows (``_rows_over_all_keys``). 1 < T < S (a prompt continued from a cached prefix): on the CPU,
    the cached keys and the chunk's own keys as two calls merged by log-sum-exp (``_prefix_and_chunk``); elsewhere
    an explicit lower-right boolean mask of at most ``masked`` entries, a longer chunk as blocks of query rows,
    each over the keys it can see with its own mask (rows are independent, so this is the same computation).
    """
    T, S = q.shape[2], k.shape[2]
    if not causal or T == 1:
        return _rows_over_all_keys(q, k, v, scale)
    mask, is_causal = None, True
    if T != S:
        if T > S:
            return None
        if q.device.type == "cpu":
            out = _prefix_and_chunk(q, k, v, scale)
            if out is not None:
                return out
        rows = max(1, masked // S)
        if T > rows:
            outs = []
            for i in range(0, T, rows):
                end = S - T + min(i + rows, T)  # keys up to this block's last query
                out = fused(q[:, :, i : i + rows], k[:, :, :end], v[:, :, :end], causal, scale, masked)
                if out is None:
                    return None
                outs.append(out)
            return torch.cat(outs, dim=2)
        qi = torch.arange(S - T, S, device=q.device)[:, None]
        mask, is_causal = torch.arange(S, device=q.device)[None, :] <= qi, False  # (T, S)
    return _flash_sdpa(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _flash_sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor | None:
    """torch's SDPA restricted to its flash backend; None where that backend does not take the input (a dtype, a
    device): the blocked path runs instead."""
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    except RuntimeError:
        return None


def _rows_over_all_keys(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor | None:
    """Queries that see every key (a decoding step, a non-causal call) by torch's flash kernel. With grouped
    key/value heads, the H // H_kv query heads of a group are folded into one head's rows: (B, H, T, D) as
    (B, H_kv, H // H_kv * T, D), one call with no key or value copied (``enable_gqa`` on the CPU copies them, and
    took twice as long for a decoding step of SmolLM2 at 4k)."""
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    out = _flash_sdpa(q.reshape(B, H_kv, (H // H_kv) * T, D), k, v, scale=scale)
    return None if out is None else out.view(B, H, T, D)


def _prefix_and_chunk(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor | None:
    """1 < T < S on the CPU: the T queries over the S - T cached keys (all visible, no mask) and over their own T
    keys (causal, square), each by torch's flash kernel, merged by their log-sum-exp. The kernel skips the masked
    half of the square and never builds a mask; grouped key/value heads are read as they are."""
    P = k.shape[2] - q.shape[2]
    try:
        o1, l1 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k[:, :, :P], v[:, :, :P], 0.0, False,
                                                                            scale=scale)
        o2, l2 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k[:, :, P:], v[:, :, P:], 0.0, True,
                                                                            scale=scale)
    except (RuntimeError, AttributeError):
        return None
    lse = torch.logaddexp(l1, l2)
    w1, w2 = torch.exp(l1 - lse)[..., None], torch.exp(l2 - lse)[..., None]  # (B, H, T, 1): each part's share
    # in place on the first part's output (no new (B, H, T, D) tensors: a fifth of the time, measured at 4k)
    out = o1.to(w1.dtype).mul_(w1).addcmul_(o2.to(w2.dtype), w2)
    return out.to(q.dtype)


class FullAttention(Attention):
    """Plain softmax(QK^T/sqrt(d))V with the whole score matrix: O(T*S) memory by design."""

    name = "full"
    weights_times_values = True

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
    call has no score mod, else lceval's blocked online-softmax path. Both are
    O(n) memory. Grouped key/value heads go to the fused kernel as they are
    (``enable_gqa``), never copied. Causal calls with fewer queries than keys
    (decoding against a cache) are bottom-right aligned: one query sees every
    key (a plain non-causal call); a short block of queries gets the
    lower-right causal mask, up to ``MASKED`` mask entries; a longer chunk
    (a prompt continued from a cached prefix) runs as blocks of query rows
    that each stay within that budget.
    """

    name = "flash"
    weights_times_values = True
    block = 512
    MASKED = 1 << 22  # largest T x S boolean mask the fused call is given (4 MiB)

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if use_triton(q, k, v, score_mod):
            from lceval.kernels import flash_attention

            self.last_impl = "triton"
            return flash_attention(q, k, v, causal=causal, scale=scale)
        if score_mod is None:
            out = fused(q, k, v, causal, scale, self.MASKED)
            if out is not None:
                self.last_impl = "torch.sdpa_flash"
                return out
        self.last_impl = "torch.blocked"
        blocks = dense_key_blocks(S, self.block, causal=causal, offset=S - T)
        return blocked_attention(q, k, v, key_blocks=blocks, mask=self.mask(causal),
                                 score_mod=score_mod, scale=scale, block_q=self.block)
