"""Block-sparse attention launcher: a per-query-tile list of the layout's nonzero key blocks."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from lceval.kernels.flash.kernel import MODE_LAYOUT
from lceval.kernels.flash.launch import launch


class BlockLUT(NamedTuple):
    """A layout compiled for the kernel (``layout_lut``); pass it instead of the layout to reuse it across calls.

    ``lut`` (H or 1, T/block, width) lists, per query block, the key blocks to visit: the fully visible ones first,
    then those that need per-element masking; ``counts`` (H or 1, T/block, 2) holds [n_full, n_all] per query block.
    """

    lut: torch.Tensor
    counts: torch.Tensor
    block: int
    T: int
    S: int
    causal: bool


def layout_lut(layout: torch.Tensor, block: int, T: int, S: int, causal: bool) -> BlockLUT:
    """Compile a bool layout (H or 1, ceil(T/block), ceil(S/block)) into the kernel's per-query-block visit lists.

    Blocks above the causal diagonal are dropped; blocks that cross it, or the
    end of the sequence, are listed after the fully visible ones, for masking.
    """
    Hl, nq, nk = layout.shape
    offset = S - T
    m = torch.arange(nq, device=layout.device)[:, None]
    n = torch.arange(nk, device=layout.device)[None, :]
    first_q = m * block + offset
    last_q = torch.clamp((m + 1) * block, max=T) - 1 + offset
    keep = layout.bool()
    partial = ((n + 1) * block > S) | ((m + 1) * block > T)
    if causal:
        keep = keep & (n * block <= last_q)
        partial = partial | ((n + 1) * block - 1 > first_q)
    full = keep & ~partial
    counts = torch.stack([full.sum(-1), keep.sum(-1)], dim=-1).to(torch.int32)  # (Hl, nq, 2)
    width = max(1, int(counts[..., 1].max()))
    rank = torch.where(full, 0, torch.where(keep, 1, 2)).to(torch.int8)  # full, then masked, then not visited
    order = torch.argsort(rank, dim=-1, stable=True)[..., :width]
    return BlockLUT(order.to(torch.int32).contiguous(), counts.contiguous(), block, T, S, causal)


def block_sparse_attention(q, k, v, layout, block, causal=True, scale=None, return_lse=False):
    """Attention over the nonzero blocks of ``layout`` (H or 1, ceil(T/block), ceil(S/block)).

    Only nonzero blocks are visited; fully visible blocks skip per-element masking.
    ``block`` must be a power of two >= 16. ``layout`` may also be a ``BlockLUT``
    from ``layout_lut`` (compiled once, as FlexAttention's block mask is).
    """
    T, S = q.shape[2], k.shape[2]
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if isinstance(layout, BlockLUT):
        if (layout.block, layout.T, layout.S, layout.causal) != (block, T, S, causal):
            raise ValueError(f"BlockLUT was built for block {layout.block}, T {layout.T}, S {layout.S}, causal "
                             f"{layout.causal}; this call has {block}, {T}, {S}, {causal}: rebuild it with layout_lut")
        compiled = layout
    else:
        want = (triton.cdiv(T, block), triton.cdiv(S, block))
        if layout.dim() != 3 or tuple(layout.shape[1:]) != want or layout.shape[0] not in (1, q.shape[1]):
            raise ValueError(f"layout must be (1 or {q.shape[1]}, {want[0]}, {want[1]}); got {tuple(layout.shape)}")
        compiled = layout_lut(layout.to(q.device), block, T, S, causal)
    if compiled.lut.shape[0] not in (1, q.shape[1]):
        raise ValueError(f"BlockLUT has {compiled.lut.shape[0]} heads; q has {q.shape[1]}")
    return launch(q, k, v, mode=MODE_LAYOUT, causal=causal, scale=scale, lut=compiled.lut.to(q.device),
                  lut_n=compiled.counts.to(q.device), block=block, return_lse=return_lse)
