"""Shared attention math: masks as pure functions, a dense oracle, a blocked engine.

Conventions (every variant follows them):

* ``q``: (B, H, T, D); ``k``, ``v``: (B, H_kv, S, D) with ``H % H_kv == 0``.
  Grouped-query attention repeats each key/value head ``H // H_kv`` times.
* Default scale is ``1 / sqrt(D)``.
* Causal masking with ``T != S`` is bottom-right aligned: query ``i`` sits at
  key position ``i + (S - T)`` (the KV-cache convention).
* A row whose keys are all masked returns zeros, never NaN.

A *mask function* ``mask(qi, kj) -> bool tensor`` says which (query, key)
pairs are visible; ``qi`` is a (tq, 1) and ``kj`` a (1, tk) tensor of absolute
key-space positions. A *score mod* ``mod(scores, qi, kj) -> scores`` changes
raw scores (ALiBi is one). Both compose freely (attention-gym style).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

MaskFn = Callable[[Tensor, Tensor], Tensor]
ScoreMod = Callable[[Tensor, Tensor, Tensor], Tensor]


# --- mask functions -------------------------------------------------------------------
# A mask says which (query position, key position) pairs are visible: ``mask(qi, kj)`` on broadcastable
# integer tensors (qi (T', 1) bottom-right aligned: query t sits at t + S - T). Each variant defines its
# visibility once, composed from these pieces, in its ``mask(causal)``; its engines, its Triton lookup
# table and its kernel reference (the dense oracle with that mask) all derive from it.
def causal_mask(qi: Tensor, kj: Tensor) -> Tensor:
    return kj <= qi


def and_masks(*masks: MaskFn) -> MaskFn:
    """Visible where every mask is (attention-gym's ``and_masks``)."""

    def mask(qi: Tensor, kj: Tensor) -> Tensor:
        out = masks[0](qi, kj)
        for m in masks[1:]:
            out = out & m(qi, kj)
        return out

    return mask


def or_masks(*masks: MaskFn) -> MaskFn:
    """Visible where any mask is."""

    def mask(qi: Tensor, kj: Tensor) -> Tensor:
        out = masks[0](qi, kj)
        for m in masks[1:]:
            out = out | m(qi, kj)
        return out

    return mask


def lookback_mask(window: int) -> MaskFn:
    """Keys less than ``window`` positions before the query (and any after it)."""
    return lambda qi, kj: kj > qi - window


def band_mask(window: int) -> MaskFn:
    """Keys less than ``window`` positions away on either side."""
    return lambda qi, kj: (qi - kj).abs() < window


def window_mask(window: int, causal: bool) -> MaskFn:
    """Causal: i - W < j <= i (W keys, itself included). Non-causal: |i - j| < W."""
    return and_masks(causal_mask, lookback_mask(window)) if causal else band_mask(window)


def block_mask(blocks: MaskFn, block: int) -> MaskFn:
    """An element mask from a mask over (query block, key block) numbers: position p lies in block p // block."""
    return lambda qi, kj: blocks(qi // block, kj // block)


# --- helpers ----------------------------------------------------------------------------
def check_shapes(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention expects q (B,H,T,D) and k, v (B,H_kv,S,D)")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} not a multiple of key/value heads {k.shape[1]}")


def repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """(B, H_kv, S, D) -> (B, H, S, D) by repeating each head H // H_kv times."""
    rep = n_heads // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def grouped_scores(q: Tensor, k: Tensor) -> Tensor:
    """q (B, H, T, D) times k (B, H_kv, S, D) transposed -> (B, H, T, S), without copying key heads.

    Query head h reads key head h // (H // H_kv), as ``repeat_kv`` would arrange it: the H query heads
    are viewed as H_kv groups of H // H_kv heads, each group one matrix product with its key head.
    """
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if H_kv == H:
        return torch.matmul(q, k.transpose(-1, -2))
    return torch.matmul(q.reshape(B, H_kv, (H // H_kv) * T, D), k.transpose(-1, -2)).view(B, H, T, S)


def grouped_values(p: Tensor, v: Tensor) -> Tensor:
    """Weights p (B, H, T, S) times values v (B, H_kv, S, D) -> (B, H, T, D), without copying value heads."""
    B, H, T, S = p.shape
    H_kv, D = v.shape[1], v.shape[-1]
    if H_kv == H:
        return torch.matmul(p, v)
    return torch.matmul(p.reshape(B, H_kv, (H // H_kv) * T, S), v).view(B, H, T, D)


def default_scale(d: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(d) if scale is None else scale


def positions(start: int, stop: int, offset: int, device) -> Tensor:
    return torch.arange(start + offset, stop + offset, device=device)


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim where an all ``-inf`` row gives zeros."""
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)
    denom = p.sum(dim=-1, keepdim=True)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


# --- dense oracle -----------------------------------------------------------------------
def row_index(rows, T: int, device) -> Tensor:
    """Query rows as an index tensor: None (all), a slice, or a sequence / tensor of row numbers."""
    if rows is None or isinstance(rows, slice):
        return torch.arange(*(rows or slice(None)).indices(T), device=device)
    idx = torch.as_tensor(rows, dtype=torch.long, device=device).flatten()
    if len(idx) and (idx.min() < 0 or idx.max() >= T):
        raise ValueError(f"query rows must lie in 0..{T - 1}")
    return idx


def dense_scores(
    q: Tensor,
    k: Tensor,
    *,
    mask: MaskFn | None,
    score_mod: ScoreMod | None,
    scale: float | None,
    rows=None,
) -> Tensor:
    """Masked, modded raw scores (B, H, T', S) for query rows ``rows`` (all by default; a slice or row numbers)."""
    check_shapes(q, k, k)
    T, S = q.shape[2], k.shape[2]
    idx = row_index(rows, T, q.device)  # (T',)
    qr = _wide(q[:, :, idx])
    s = grouped_scores(qr, _wide(k)) * default_scale(q.shape[-1], scale)  # (B,H,T',S)
    qi = (idx + (S - T))[:, None]
    kj = torch.arange(S, device=q.device)[None, :]
    if score_mod is not None:
        s = score_mod(s, qi, kj)
    if mask is not None:
        s = s.masked_fill(~mask(qi, kj), float("-inf"))
    return s


def dense_attention(q, k, v, *, mask=None, score_mod=None, scale=None) -> Tensor:
    """Eager O(T*S)-memory attention: the oracle every other path is checked against.

    16-bit inputs are computed in float32 and rounded once at the end.
    """
    p = safe_softmax(dense_scores(q, k, mask=mask, score_mod=score_mod, scale=scale))
    return grouped_values(p, _wide(v)).to(q.dtype)  # (B, H, T, D)


def _wide(x: Tensor) -> Tensor:
    """float32 for 16-bit tensors, unchanged otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --- blocked online-softmax engine ------------------------------------------------------
KeyBlocks = Callable[[int, int], Iterable[tuple[int, int, bool]]]


def dense_key_blocks(S: int, block: int, *, causal: bool, offset: int) -> KeyBlocks:
    """Every key block (up to the diagonal when causal); the bool says 'needs masking'."""

    def blocks(q0: int, q1: int):
        last = min(S, q1 + offset) if causal else S
        for k0 in range(0, last, block):
            k1 = min(k0 + block, last)
            yield k0, k1, causal and k1 - 1 > q0 + offset

    return blocks


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_blocks: KeyBlocks,
    mask: MaskFn | None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    block_q: int = 256,
) -> Tensor:
    """Attention over the key blocks ``key_blocks(q0, q1)`` yields, with online softmax.

    Memory is O(block_q * block_k) per step, so it grows linearly with length.
    Only the listed blocks are visited; the work is proportional to them.
    """
    check_shapes(q, k, v)
    B, H, T, D = q.shape
    S = k.shape[2]
    offset = S - T
    scale = default_scale(D, scale)
    acc_dtype = _wide(q[:0]).dtype  # 16-bit inputs accumulate in float32 and are rounded once at the end
    outs = []
    for q0 in range(0, T, block_q):
        q1 = min(q0 + block_q, T)
        qb = _wide(q[:, :, q0:q1]) * scale  # (B, H, bq, D)
        qi = positions(q0, q1, offset, q.device)[:, None]
        m = qb.new_full((B, H, q1 - q0, 1), float("-inf"), dtype=acc_dtype)
        denom = qb.new_zeros((B, H, q1 - q0, 1), dtype=acc_dtype)
        acc = qb.new_zeros((B, H, q1 - q0, D), dtype=acc_dtype)
        for k0, k1, needs_mask in key_blocks(q0, q1):
            s = grouped_scores(qb, _wide(k[:, :, k0:k1]))  # (B, H, bq, bk)
            kj = torch.arange(k0, k1, device=q.device)[None, :]
            if score_mod is not None:
                s = score_mod(s, qi, kj)
            if needs_mask and mask is not None:
                s = s.masked_fill(~mask(qi, kj), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp(s - m_safe)
            alpha = torch.exp(m - m_safe)
            denom = denom * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + grouped_values(p, _wide(v[:, :, k0:k1]))
            m = m_new
        outs.append(acc / torch.where(denom > 0, denom, torch.ones_like(denom)))
    return torch.cat(outs, dim=2).to(q.dtype)


# --- gathered engine ---------------------------------------------------------------------
KeySelect = Callable[[int, int], "slice | Tensor"]


def gathered_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    keys: KeySelect,
    mask: MaskFn | None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    block_q: int = 128,
    shift_invariant: bool = False,
) -> Tensor:
    """Attention where each query block sees a chosen set of keys: ``keys(q0, q1)`` returns a
    slice (a contiguous band: sliding windows) or an index tensor (gathered key blocks: sparse).

    Per query block, one fused masked attention (torch SDPA with a boolean mask) over just those
    keys; with a score bias, or where a row sees no key, the explicit masked softmax instead.
    Memory is O(block_q x keys per block) per step; work is proportional to the keys chosen.
    16-bit inputs are computed in float32 on the explicit path and rounded once.
    ``shift_invariant``: the mask depends on ``qi - kj`` only (windows), so a band's mask is built
    once per shape of the band and reused for every query block.
    """
    check_shapes(q, k, v)
    B, H, T, D = q.shape
    S = k.shape[2]
    offset = S - T
    gqa = k.shape[1] != H
    outs = []
    masks: dict[tuple[int, int, int], tuple[Tensor, bool]] = {}
    for q0 in range(0, T, block_q):
        q1 = min(q0 + block_q, T)
        sel = keys(q0, q1)
        band = isinstance(sel, slice)
        n_keys = sel.stop - sel.start if band else sel.shape[0]
        if n_keys == 0:
            outs.append(q.new_zeros((B, H, q1 - q0, D)))
            continue
        kb, vb = k[:, :, sel], v[:, :, sel]  # only the chosen keys, never the whole cache; heads not repeated
        kj = (torch.arange(sel.start, sel.stop, device=q.device) if band else sel)[None, :]  # (1, keys)
        qi = positions(q0, q1, offset, q.device)[:, None]
        reuse = (q0 + offset - sel.start, q1 - q0, n_keys) if band and shift_invariant else None
        if reuse in masks:
            visible, every_row = masks[reuse]
        else:
            visible = mask(qi, kj) if mask is not None else torch.ones(qi.shape[0], n_keys, dtype=torch.bool,
                                                                       device=q.device)
            every_row = bool(visible.any(-1).all())
            if reuse is not None:
                masks[reuse] = visible, every_row
        if score_mod is None and every_row:
            outs.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, q0:q1], kb, vb, attn_mask=visible,
                                                                         scale=scale, enable_gqa=gqa))
            continue
        s = grouped_scores(_wide(q[:, :, q0:q1]) * default_scale(D, scale), _wide(kb))
        if score_mod is not None:
            s = score_mod(s, qi, kj)
        s = s.masked_fill(~visible, float("-inf"))
        outs.append(grouped_values(safe_softmax(s), _wide(vb)).to(q.dtype))
    return torch.cat(outs, dim=2)


# --- head ablation -----------------------------------------------------------------------
def by_layer(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, h in heads:
        out.setdefault(layer, []).append(h)
    return out


def zero_heads(out, heads: list[int] | None, head_dim: int = 1):
    """``out`` with the given heads' slices zeroed along ``head_dim`` (unchanged, not copied, when none)."""
    if not heads:
        return out
    out = out.clone()
    index = [slice(None)] * out.dim()
    index[head_dim] = heads
    out[tuple(index)] = 0
    return out
