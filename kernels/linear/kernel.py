"""Chunked linear-attention forward kernels (Triton), parallel over chunks.

Two kernels, both parallel over (chunk, batch x head, value-dim tile):

1. ``chunk_state_kernel``: for each key chunk c, the float32 summaries
   S_c = phi(K_c)^T V_c (D x D) and z_c = sum_j phi(k_j) (D), computed once per
   key/value head (grouped query heads share them).
2. ``chunk_output_kernel``: for each query chunk, the output from the prefix
   state (the sum of the summaries of all earlier chunks, an exclusive cumsum
   done between the two launches) plus the causal intra-chunk quadratic term:
   out = (phi(Q_c) S_prefix + A V_c) / (phi(Q_c) z_prefix + rowsum A),
   A = tril(phi(Q_c) phi(K_c)^T).

Memory is one D x D state per chunk: linear in the length.
"""

from __future__ import annotations

import triton
import triton.language as tl

FEATURE_MAPS = {"elu1": 0, "relu": 1, "softplus": 2}


@triton.jit
def _phi(x, valid, FEATURE: tl.constexpr):
    if FEATURE == 0:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))  # elu(x) + 1
    elif FEATURE == 1:
        y = tl.maximum(x, 0.0)
    else:
        y = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))  # softplus
    return tl.where(valid, y, 0.0)  # padding rows and feature dims contribute nothing


@triton.jit
def _load_phi(base, rows, stride_row, offs_d, ok, FEATURE: tl.constexpr):
    """phi of a (rows x features) tile in float32; masked-out entries are 0."""
    x = tl.load(base + rows[:, None] * stride_row + offs_d[None, :], mask=ok, other=0.0)
    return _phi(x.to(tl.float32), ok, FEATURE)


@triton.jit
def chunk_state_kernel(
    K, V, STATE, Z,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    H_KV, N_KEYS, KEY_START, N_CHUNKS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, PRECISION: tl.constexpr,
):
    """STATE[b, h, c, :, dv] = phi(K_c)^T V_c[:, dv]; Z[b, h, c, :] = sum phi(K_c) (dv tile 0 writes it)."""
    c = tl.program_id(0).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_bh = tl.program_id(1).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_dv = tl.program_id(2).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    b = pid_bh // H_KV
    h = pid_bh % H_KV
    rows = c * CHUNK + tl.arange(0, CHUNK)
    keys = KEY_START + rows
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_ok = rows[:, None] < N_KEYS
    k_ok = row_ok & (offs_d[None, :] < D)
    fk = _load_phi(K + b * stride_kb + h * stride_kh, keys, stride_ks, offs_d, k_ok, FEATURE)  # (CHUNK, BLOCK_D)
    v_ok = row_ok & (offs_dv[None, :] < D)
    v = tl.load(V + b * stride_vb + h * stride_vh + keys[:, None] * stride_vs + offs_dv[None, :], mask=v_ok, other=0.0)
    s = tl.dot(tl.trans(fk), v.to(tl.float32), input_precision=PRECISION)  # (BLOCK_D, BLOCK_DV)
    base = (pid_bh * N_CHUNKS + c) * D
    tl.store(STATE + (base + offs_d[:, None]) * D + offs_dv[None, :], s,
             mask=(offs_d[:, None] < D) & (offs_dv[None, :] < D))
    if pid_dv == 0:
        tl.store(Z + base + offs_d, tl.sum(fk, 0), mask=offs_d < D)


@triton.jit
def chunk_output_kernel(
    Q, K, V, O, STATE, Z,  # noqa: E741
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, KEY_START, N_CHUNKS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """One query chunk: prefix state (STATE/Z hold each chunk's prefix, or the total if not causal) + intra term."""
    c = tl.program_id(0).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_bh = tl.program_id(1).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_dv = tl.program_id(2).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_c = tl.arange(0, CHUNK)
    rows = c * CHUNK + offs_c
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_ok = rows[:, None] < T
    q_ok = row_ok & (offs_d[None, :] < D)
    fq = _load_phi(Q + b * stride_qb + h * stride_qh, rows, stride_qt, offs_d, q_ok, FEATURE)  # (CHUNK, BLOCK_D)
    sc = 0 if not CAUSAL else c  # non-causal: one total state at index 0
    base = ((b * (H // GROUP) + hk) * N_CHUNKS + sc) * D
    state = tl.load(STATE + (base + offs_d[:, None]) * D + offs_dv[None, :],
                    mask=(offs_d[:, None] < D) & (offs_dv[None, :] < D), other=0.0)  # (BLOCK_D, BLOCK_DV)
    z = tl.load(Z + base + offs_d, mask=offs_d < D, other=0.0)
    num = tl.dot(fq, state, input_precision=PRECISION)  # (CHUNK, BLOCK_DV)
    den = tl.sum(fq * z[None, :], 1)
    if CAUSAL:
        keys = KEY_START + rows
        fk = _load_phi(K + b * stride_kb + hk * stride_kh, keys, stride_ks, offs_d, q_ok, FEATURE)
        v = tl.load(V + b * stride_vb + hk * stride_vh + keys[:, None] * stride_vs + offs_dv[None, :],
                    mask=row_ok & (offs_dv[None, :] < D), other=0.0)
        a = tl.dot(fq, tl.trans(fk), input_precision=PRECISION)  # (CHUNK, CHUNK)
        a = tl.where(offs_c[None, :] <= offs_c[:, None], a, 0.0)
        num += tl.dot(a, v.to(tl.float32), input_precision=PRECISION)
        den += tl.sum(a, 1)
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok & (offs_dv[None, :] < D))
