"""Attention that visits only part of the keys: ``sliding_window`` and block-``sparse``.

Both run on the blocked online-softmax engine and visit only the key blocks
their mask can reach, so memory grows linearly with length and work with the
number of visible keys.
"""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from lceval.attention.base import Attention, use_triton
from lceval.attention.core import (
    MaskFn,
    and_masks,
    block_mask,
    blocked_attention,
    causal_mask,
    check_shapes,
    gathered_attention,
    or_masks,
    window_mask,
)

#: largest score block (bytes) the gathered engine builds per step (a window's band, a sparse group's
#: gathered keys); beyond it the blocked online-softmax engine runs
BAND_BYTES = 64 * 2**20


def _band_blocks(S: int, block: int, offset: int, lo_fn, hi_fn, mask: MaskFn, device):
    """Key blocks covering [lo_fn(q0), hi_fn(q1)); masking skipped where all four corners are visible.

    Valid for masks whose visible set is a band (convex per row and column):
    causal, sliding window.
    """

    def blocks(q0: int, q1: int):
        lo, hi = max(0, lo_fn(q0 + offset)), min(S, hi_fn(q1 - 1 + offset) + 1)
        start = (lo // block) * block
        for k0 in range(start, hi, block):
            k1 = min(k0 + block, S)
            qi = torch.tensor([[q0 + offset], [q1 - 1 + offset]], device=device)
            kj = torch.tensor([[max(k0, lo), k1 - 1]], device=device)
            yield max(k0, lo), min(k1, hi), not bool(mask(qi, kj).all())

    return blocks


class SlidingWindowParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    window: pydantic.PositiveInt = pydantic.Field(description="keys visible per query, itself included")


class SlidingWindowAttention(Attention):
    """Causal: query i sees keys i - W < j <= i (W keys). Non-causal: |i - j| < W."""

    name = "sliding_window"
    Params = SlidingWindowParams

    def mask(self, causal: bool) -> MaskFn:
        return window_mask(self.params.window, causal)

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        check_shapes(q, k, v)
        T, S, W = q.shape[2], k.shape[2], self.params.window
        if use_triton(q, k, v, score_mod):
            from lceval.kernels import sliding_window_attention

            self.last_impl = "triton"
            return sliding_window_attention(q, k, v, W, scale=scale, causal=causal)
        mask = self.mask(causal)
        offset = S - T
        reach = W if causal else 2 * W - 1  # keys one query can see
        block_q = 128 if W >= 128 else max(32, W)
        band_bytes = q.shape[0] * q.shape[1] * block_q * (block_q + reach) * 4
        if band_bytes <= BAND_BYTES:  # one contiguous key range per query block, one fused masked attention

            def band(q0: int, q1: int) -> slice:
                lo = max(0, q0 + offset - W + 1)
                hi = min(S, q1 + offset if causal else q1 - 1 + offset + W)
                return slice(lo, max(lo, hi))

            self.last_impl = "torch.banded"
            return gathered_attention(q, k, v, keys=band, mask=mask, score_mod=score_mod, scale=scale,
                                      block_q=block_q, shift_invariant=True)
        block = max(32, min(512, W))  # very long windows or large batches: online softmax over key blocks
        hi = (lambda p: p) if causal else (lambda p: p + W - 1)
        blocks = _band_blocks(S, block, offset, lambda p: p - W + 1, hi, mask, q.device)
        self.last_impl = "torch.blocked"
        return blocked_attention(q, k, v, key_blocks=blocks, mask=mask, score_mod=score_mod, scale=scale,
                                 block_q=block)


class SparseParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    block: int = pydantic.Field(64, ge=1, le=1024, description="block size in tokens (the Triton path needs a "
                                "power of two >= 16; other sizes run the torch path)")
    local_blocks: pydantic.PositiveInt = pydantic.Field(4, description="the diagonal block and the ones before it")
    global_blocks: pydantic.NonNegativeInt = pydantic.Field(1, description="sink blocks at the start, seen by all")
    stride: pydantic.PositiveInt | None = pydantic.Field(None, description="also every stride-th key block")


class BlockSparseAttention(Attention):
    """Block-sparse attention with local, global (sink) and optional strided blocks.

    Block indices are taken on absolute key positions (query i sits at
    i + S - T). Query block ``qb`` sees key block ``kb`` when
    ``qb - local_blocks < kb <= qb`` (``|qb - kb| < local_blocks`` if not causal),
    or ``kb < global_blocks``, or ``kb % stride == 0``; inside visible blocks
    causal masking applies per element.
    """

    name = "sparse"
    Params = SparseParams

    def block_visible(self, qb: Tensor, kb: Tensor, causal: bool) -> Tensor:
        """Which key blocks each query block sees: a window of local blocks, the global ones, every stride-th."""
        p = self.params
        parts = [window_mask(p.local_blocks, causal), lambda q, k: k < p.global_blocks]
        if p.stride:
            parts.append(lambda q, k: k % p.stride == 0)
        vis = or_masks(*parts)
        return (and_masks(causal_mask, vis) if causal else vis)(qb, kb)

    def mask(self, causal: bool) -> MaskFn:
        blocks = block_mask(lambda qb, kb: self.block_visible(qb, kb, causal), self.params.block)
        return and_masks(blocks, causal_mask) if causal else blocks

    def layout(self, n_blocks: int, causal: bool = True) -> Tensor:
        """The (query block, key block) visibility of a square input of n_blocks blocks."""
        idx = torch.arange(n_blocks)
        return self.block_visible(idx[:, None], idx[None, :], causal)

    def format_layout(self, n_blocks: int, causal: bool = True) -> str:
        return "\n".join("".join("#" if x else "." for x in row) for row in self.layout(n_blocks, causal).tolist())

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        check_shapes(q, k, v)
        T, S, b = q.shape[2], k.shape[2], self.params.block
        offset = S - T
        # the kernel's layout is on query blocks; it equals ours when blocks align (T == S, say)
        if offset % b == 0 and b >= 16 and not b & (b - 1) and use_triton(q, k, v, score_mod):
            from lceval.kernels import block_sparse_attention

            nq, nk = -(-T // b), -(-S // b)
            qb = torch.arange(nq, device=q.device)[:, None] + offset // b
            layout = self.block_visible(qb, torch.arange(nk, device=q.device)[None, :], causal)[None]
            self.last_impl = "triton"
            return block_sparse_attention(q, k, v, layout, b, causal=causal, scale=scale)
        mask = self.mask(causal)
        kbs = torch.arange((S + b - 1) // b)
        group = max(1, min(8, 128 // b)) * b  # query blocks attended together (fewer, larger fused calls)
        p = self.params
        most_blocks = p.local_blocks + group // b + p.global_blocks + (len(kbs) // p.stride + 1 if p.stride else 0)
        if q.shape[0] * q.shape[1] * group * most_blocks * b * 4 <= BAND_BYTES:  # else: the blocked engine

            def keys(q0: int, q1: int):
                p0, p1 = q0 + offset, q1 - 1 + offset
                qbs = torch.arange(p0 // b, p1 // b + 1)
                vis = self.block_visible(qbs[:, None], kbs[None, :], causal)  # (n_qb, n_kb)
                cols = torch.nonzero(vis.any(0)).flatten()
                if causal:
                    cols = cols[cols * b <= p1]
                idx = (cols[:, None] * b + torch.arange(b)[None, :]).flatten()
                return idx[idx < S].to(q.device)

            self.last_impl = "torch.gathered"
            return gathered_attention(q, k, v, keys=keys, mask=mask, score_mod=score_mod, scale=scale, block_q=group)

        def blocks(q0: int, q1: int):
            p0, p1 = q0 + offset, q1 - 1 + offset  # absolute positions of the first/last query
            qbs = torch.arange(p0 // b, p1 // b + 1)  # floor division: negative positions see nothing causally
            vis = self.block_visible(qbs[:, None], kbs[None, :], causal)  # (n_qb, n_kb)
            for kb in torch.nonzero(vis.any(0)).flatten().tolist():
                k0, k1 = kb * b, min((kb + 1) * b, S)
                if causal and k0 > p1:
                    continue
                full = bool(vis[:, kb].all()) and (not causal or k1 - 1 <= p0) and p0 // b == p1 // b
                yield k0, k1, not full

        self.last_impl = "torch.blocked"
        return blocked_attention(q, k, v, key_blocks=blocks, mask=mask, score_mod=score_mod, scale=scale,
                                 block_q=b)
