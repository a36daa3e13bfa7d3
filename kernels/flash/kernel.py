"""The online-softmax attention forward kernel (Triton).

One program computes one (query tile, batch x head). It visits key tiles and
keeps a running max, a running sum and an accumulator (the flash-attention
recurrence), so nothing of size T x S is ever built. Which key tiles are
visited is the only thing the three softmax ops differ in:

* ``MODE_DENSE``: every tile (causal: up to the diagonal; tiles above it are
  never visited) — flash attention;
* ``MODE_WINDOW``: only tiles that intersect the window i-W < j <= i (or
  |i-j| < W non-causal) — sliding-window attention, work O(T x W);
* ``MODE_LAYOUT``: only the tiles listed for this query tile in a lookup
  table built from a block layout — block-sparse attention (fully visible
  tiles first, then the few that need a mask, so the hot loop has no branch).

Per-element masking is applied only on tiles that need it (the diagonal, the
window's edges, the sequence end, layout tiles that are partly visible).
Positions are absolute key positions: query i sits at i + OFFSET, OFFSET = S - T.
Rows with no visible key produce zeros and LSE = -inf.
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_DENSE, MODE_WINDOW, MODE_LAYOUT = 0, 1, 2
LOG2E = 1.4426950408889634


@triton.jit
def _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d, m_i, l_i, acc,
          S, WINDOW, qk_scale, D: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, MODE: tl.constexpr,
          MASK: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k_ptr = K + k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
    v_ptr = V + v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
    if MASK or D != BLOCK_D:
        kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < D)
        k = tl.load(k_ptr, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr, mask=kv_mask, other=0.0)
    else:  # an inner tile: every key exists and D fills the block
        k = tl.load(k_ptr)
        v = tl.load(v_ptr)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), in log2 units
    if MASK:
        vis = (offs_n[None, :] < S) & row_vis[:, None]
        if CAUSAL:
            vis = vis & (offs_n[None, :] <= qpos[:, None])
        if MODE == 1:
            if CAUSAL:
                vis = vis & (offs_n[None, :] > qpos[:, None] - WINDOW)
            else:
                d = qpos[:, None] - offs_n[None, :]
                vis = vis & (d < WINDOW) & (d > -WINDOW)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = m_new  # an unmasked tile has finite scores, so the new max is finite
    if MASK:  # a row that has seen no visible key yet keeps max -inf; exp2(-inf - 0) = 0
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def attention_fwd_kernel(
    Q, K, V, O, LSE, LUT, LUT_N,  # noqa: E741
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    stride_lut_h, stride_lut_m, stride_lutn_h,
    H, GROUP, T, S, OFFSET, WINDOW, qk_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, RETURN_LSE: tl.constexpr, LUT_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_bh = tl.program_id(1).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP  # grouped-query: key/value head of this query head
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
    qpos = offs_m + OFFSET  # absolute key-space position of each query row
    k_base = b * stride_kb + hk * stride_kh
    v_base = b * stride_vb + hk * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_vis = offs_m < T
    first_q = pid_m * BLOCK_M + OFFSET
    last_q = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T) - 1 + OFFSET

    if MODE == 2:
        # the tile's list holds its fully visible key blocks first, then those that need per-element masking
        lut_h = h if LUT_H > 1 else 0
        n_full = tl.load(LUT_N + lut_h * stride_lutn_h + pid_m * 2)
        n_all = tl.load(LUT_N + lut_h * stride_lutn_h + pid_m * 2 + 1)
        lut = LUT + lut_h * stride_lut_h + pid_m * stride_lut_m
        for i in range(0, n_full):
            start_n = tl.load(lut + i) * BLOCK_N
            m_i, l_i, acc = _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d,
                                  m_i, l_i, acc, S, WINDOW, qk_scale, D, BLOCK_D, CAUSAL, MODE, False, BLOCK_N, PRECISION)
        for i in range(n_full, n_all):
            start_n = tl.load(lut + i) * BLOCK_N
            m_i, l_i, acc = _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d,
                                  m_i, l_i, acc, S, WINDOW, qk_scale, D, BLOCK_D, CAUSAL, MODE, True, BLOCK_N, PRECISION)
    else:
        # keys [lo, hi) can be visible to some row of this tile; [full_lo, full_hi) are visible to all of them (no
        # per-element mask), so the hot middle loop has no branch and Triton can software-pipeline it
        lo = 0
        hi = S
        if CAUSAL:
            hi = tl.minimum(S, last_q + 1)
        if MODE == 1:
            lo = tl.maximum(0, first_q - WINDOW + 1)
            if not CAUSAL:
                hi = tl.minimum(S, last_q + WINDOW)
        hi = tl.maximum(hi, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        full_lo = lo
        if MODE == 1:  # first tile whose every key is inside every row's window
            full_lo = tl.maximum(lo, ((tl.maximum(last_q - WINDOW + 1, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
        full_lo = tl.minimum(full_lo, hi)
        full_hi = (S // BLOCK_N) * BLOCK_N  # tiles past the end of the keys need a mask
        if CAUSAL:  # tiles crossing the diagonal of the first row need a mask
            full_hi = tl.minimum(full_hi, (tl.maximum(first_q + 1, 0) // BLOCK_N) * BLOCK_N)
        if MODE == 1 and not CAUSAL:
            full_hi = tl.minimum(full_hi, (tl.maximum(first_q + WINDOW, 0) // BLOCK_N) * BLOCK_N)
        full_hi = tl.minimum(tl.maximum(full_hi, full_lo), tl.maximum(hi, full_lo))
        for start_n in range(lo, full_lo, BLOCK_N):
            m_i, l_i, acc = _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d,
                                  m_i, l_i, acc, S, WINDOW, qk_scale, D, BLOCK_D, CAUSAL, MODE, True, BLOCK_N, PRECISION)
        for start_n in range(full_lo, full_hi, BLOCK_N):
            m_i, l_i, acc = _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d,
                                  m_i, l_i, acc, S, WINDOW, qk_scale, D, BLOCK_D, CAUSAL, MODE, False, BLOCK_N, PRECISION)
        for start_n in range(full_hi, hi, BLOCK_N):
            m_i, l_i, acc = _tile(q, K, V, qpos, start_n, row_vis, k_base, v_base, stride_ks, stride_vs, offs_d,
                                  m_i, l_i, acc, S, WINDOW, qk_scale, D, BLOCK_D, CAUSAL, MODE, True, BLOCK_N, PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=q_mask)
    if RETURN_LSE:
        lse = tl.where(l_i > 0, (m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
        tl.store(LSE + pid_bh * T + offs_m, lse, mask=offs_m < T)
