"""Block-sparse attention launcher: a per-query-tile list of the layout's nonzero key blocks."""

from __future__ import annotations

import torch
import triton

from lceval.kernels.flash.kernel import MODE_LAYOUT
from lceval.kernels.flash.launch import launch


def layout_lut(layout: torch.Tensor, block: int, T: int, S: int, causal: bool):
    """(lut, counts): per (head, query block) the visited key blocks, +(n+1) if fully visible, -(n+1) if masked.

    Blocks above the causal diagonal are dropped; blocks that cross it, or the
    end of the sequence, are marked for per-element masking.
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
    code = torch.where(partial, -(n + 1), n + 1).expand(Hl, nq, nk)
    counts = keep.sum(-1).to(torch.int32)  # (Hl, nq)
    width = max(1, int(counts.max()))
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :width]  # kept blocks first, in order
    lut = torch.gather(code, -1, order).to(torch.int32).contiguous()
    return lut, counts.contiguous()


def block_sparse_attention(q, k, v, layout, block, causal=True, scale=None, return_lse=False):
    """Attention over the nonzero blocks of ``layout`` (H or 1, ceil(T/block), ceil(S/block)).

    Only nonzero blocks are visited; fully visible blocks skip per-element masking.
    ``block`` must be a power of two >= 16.
    """
    T, S = q.shape[2], k.shape[2]
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    want = (triton.cdiv(T, block), triton.cdiv(S, block))
    if layout.dim() != 3 or tuple(layout.shape[1:]) != want or layout.shape[0] not in (1, q.shape[1]):
        raise ValueError(f"layout must be (1 or {q.shape[1]}, {want[0]}, {want[1]}); got {tuple(layout.shape)}")
    lut, counts = layout_lut(layout.to(q.device), block, T, S, causal)
    return launch(q, k, v, mode=MODE_LAYOUT, causal=causal, scale=scale, lut=lut, lut_n=counts, block=block,
                  return_lse=return_lse)
