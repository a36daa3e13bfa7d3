"""Chunked linear-attention forward kernels (Triton).

* Causal, two launches: ``chunk_prefix_kernel``, one program per (batch x
  key head, value-dim tile), walks the chunks in order carrying the float32
  state S = sum phi(k_j)^T v_j and normaliser z = sum phi(k_j) in registers
  and writes each chunk's exclusive prefix; ``chunk_causal_output_kernel``,
  parallel over (chunk, batch x head, value-dim tile), computes
  out = (phi(Q_c) S_c + A V_c) / (phi(Q_c) z_c + rowsum A),
  A = tril(phi(Q_c) phi(K_c)^T).
  Measured on an H100 (bf16, 16k tokens x 2048 wide): a version that summed
  per-chunk states with a torch cumsum cost ~1.3 ms at every length (memory
  traffic); one fully sequential kernel per (head, value tile) had too few
  programs at batch 1 (4.9 ms at 16k, hd 128). Splitting the sequential scan
  (cheap) from the parallel output (most of the work) keeps both short.
  For 16-bit inputs the intra-chunk and state-update products run in that
  type on tensor cores; the state stays float32.
* Not causal: ``chunk_state_kernel`` sums phi(K)^T V over all keys in parallel
  over chunks, then ``chunk_output_kernel`` reads the total once per query chunk.

Memory is one D x D state per program: linear in the length.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _phi(x, valid, FEATURE: tl.constexpr):  # FEATURE: lceval.attention.features.FEATURE_IDS
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
def _lowp(x, LOWP: tl.constexpr, DT: tl.constexpr):
    """A dot operand in the inputs' 16-bit type (tensor cores at full rate), or float32 as is."""
    y = x
    if LOWP:
        y = x.to(DT)
    return y


@triton.jit
def _summary(k_base, v_base, keys, ok, stride_ks, stride_vs, offs_d, offs_dv, d_ok, dv_ok,
             FEATURE: tl.constexpr, PRECISION: tl.constexpr, LOWP: tl.constexpr, DT: tl.constexpr):
    """One chunk of keys: phi(K)^T V (BLOCK_D x BLOCK_DV, float32) and sum phi(K) (BLOCK_D); rows not ``ok`` add 0."""
    fk = _load_phi(k_base, keys, stride_ks, offs_d, ok & d_ok, FEATURE)  # (CHUNK, BLOCK_D)
    v = tl.load(v_base + keys[:, None] * stride_vs + offs_dv[None, :], mask=ok & dv_ok, other=0.0)
    kv = tl.dot(tl.trans(_lowp(fk, LOWP, DT)), _lowp(v.to(tl.float32), LOWP, DT), input_precision=PRECISION)
    return kv, tl.sum(fk, 0)


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
    s, zc = _summary(K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh, keys,
                     rows[:, None] < N_KEYS, stride_ks, stride_vs, offs_d, offs_dv, offs_d[None, :] < D,
                     offs_dv[None, :] < D, FEATURE, PRECISION, False, tl.float32)  # (BLOCK_D, BLOCK_DV), (BLOCK_D)
    base = (pid_bh * N_CHUNKS + c) * D
    tl.store(STATE + (base + offs_d[:, None]) * D + offs_dv[None, :], s,
             mask=(offs_d[:, None] < D) & (offs_dv[None, :] < D))
    if pid_dv == 0:
        tl.store(Z + base + offs_d, zc, mask=offs_d < D)


@triton.jit
def chunk_output_kernel(
    Q, K, V, O, STATE, Z,  # noqa: E741
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, N_CHUNKS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Not causal: one query chunk against the total state (index 0 of STATE/Z)."""
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
    base = ((b * (H // GROUP) + hk) * N_CHUNKS) * D
    state = tl.load(STATE + (base + offs_d[:, None]) * D + offs_dv[None, :],
                    mask=(offs_d[:, None] < D) & (offs_dv[None, :] < D), other=0.0)  # (BLOCK_D, BLOCK_DV)
    z = tl.load(Z + base + offs_d, mask=offs_d < D, other=0.0)
    num = tl.dot(fq, state, input_precision=PRECISION)  # (CHUNK, BLOCK_DV)
    den = tl.sum(fq * z[None, :], 1)
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok & (offs_dv[None, :] < D))


@triton.jit
def chunk_prefix_kernel(
    K, V, HS, Z,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    H_KV, T, PREFIX, N_CHUNKS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, PRECISION: tl.constexpr, LOWP: tl.constexpr,
):
    """Causal: HS[bh, c] = sum of phi(k_j)^T v_j over the keys before query chunk c (j < PREFIX + c * CHUNK), Z alike.

    One program per (batch x key head, value-dim tile) walks the chunks in order with the running state in registers
    and writes each chunk's exclusive prefix; the output kernel then runs in parallel over chunks.
    """
    pid_bh = tl.program_id(0).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_dv = tl.program_id(1).to(tl.int64)
    b = pid_bh // H_KV
    h = pid_bh % H_KV
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    d_ok = offs_d[None, :] < D
    dv_ok = offs_dv[None, :] < D
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    DT: tl.constexpr = V.dtype.element_ty
    state = tl.zeros([BLOCK_D, BLOCK_DV], dtype=tl.float32)
    z = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, PREFIX, CHUNK):  # keys before the first query are visible to every query
        keys = start + offs_c
        kv, zc = _summary(k_base, v_base, keys, keys[:, None] < PREFIX, stride_ks, stride_vs, offs_d, offs_dv, d_ok,
                          dv_ok, FEATURE, PRECISION, LOWP, DT)
        state += kv
        z += zc
    st_mask = (offs_d[:, None] < D) & dv_ok
    for c in range(0, N_CHUNKS):
        base = (pid_bh * N_CHUNKS + c) * D
        tl.store(HS + (base + offs_d[:, None]) * D + offs_dv[None, :], state, mask=st_mask)
        if pid_dv == 0:
            tl.store(Z + base + offs_d, z, mask=offs_d < D)
        rows = c * CHUNK + offs_c
        kv, zc = _summary(k_base, v_base, PREFIX + rows, rows[:, None] < T, stride_ks, stride_vs, offs_d, offs_dv,
                          d_ok, dv_ok, FEATURE, PRECISION, LOWP, DT)
        state += kv
        z += zc


@triton.jit
def chunk_causal_output_kernel(
    Q, K, V, O, HS, Z,  # noqa: E741
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, PREFIX, N_CHUNKS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, PRECISION: tl.constexpr, LOWP: tl.constexpr,
):
    """Causal, one query chunk: (phi(Q_c) HS_c + A V_c) / (phi(Q_c) Z_c + rowsum A), A = tril(phi(Q_c) phi(K_c)^T)."""
    c = tl.program_id(0).to(tl.int64)  # 64-bit: offsets pass 2**31 elements
    pid_bh = tl.program_id(1).to(tl.int64)
    pid_dv = tl.program_id(2).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    d_ok = offs_d[None, :] < D
    dv_ok = offs_dv[None, :] < D
    DT: tl.constexpr = V.dtype.element_ty
    rows = c * CHUNK + offs_c
    ok = rows[:, None] < T
    keys = PREFIX + rows
    fq = _load_phi(Q + b * stride_qb + h * stride_qh, rows, stride_qt, offs_d, ok & d_ok, FEATURE)  # (CHUNK, BLOCK_D)
    fk = _load_phi(K + b * stride_kb + hk * stride_kh, keys, stride_ks, offs_d, ok & d_ok, FEATURE)
    v = tl.load(V + b * stride_vb + hk * stride_vh + keys[:, None] * stride_vs + offs_dv[None, :], mask=ok & dv_ok,
                other=0.0)
    base = ((b * (H // GROUP) + hk) * N_CHUNKS + c) * D
    state = tl.load(HS + (base + offs_d[:, None]) * D + offs_dv[None, :], mask=(offs_d[:, None] < D) & dv_ok,
                    other=0.0)
    z = tl.load(Z + base + offs_d, mask=offs_d < D, other=0.0)
    num = tl.dot(fq, state, input_precision=PRECISION)  # the float32 state keeps (at least) tf32 precision
    den = tl.sum(fq * z[None, :], 1)
    a = tl.dot(_lowp(fq, LOWP, DT), tl.trans(_lowp(fk, LOWP, DT)), input_precision=PRECISION)  # (CHUNK, CHUNK)
    a = tl.where(offs_c[None, :] <= offs_c[:, None], a, 0.0)
    num += tl.dot(_lowp(a, LOWP, DT), _lowp(v.to(tl.float32), LOWP, DT), input_precision=PRECISION)
    den += tl.sum(a, 1)
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=ok & dv_ok)
