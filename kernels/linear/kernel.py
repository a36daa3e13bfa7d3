"""Chunked linear-attention forward kernel (Triton).

One program per (batch x head) walks the sequence in chunks: inside a chunk
the causal part is a small quadratic product, across chunks a float32 state
sum_j phi(k_j)^T v_j and normaliser sum_j phi(k_j) carry the past, so memory
is O(D^2) per head whatever the length.
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
def linear_attention_fwd_kernel(
    Q, K, V, O,  # noqa: E741
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, S, PREFIX,
    D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    FEATURE: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    hk = h // GROUP
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < D
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    o_base = O + b * stride_ob + h * stride_oh
    state = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)  # sum phi(k)^T v
    z = tl.zeros([BLOCK_D], dtype=tl.float32)  # sum phi(k)

    # keys every query sees: all of them (non-causal) or the PREFIX = S - T before the first query
    n_absorb = S if not CAUSAL else PREFIX
    for s0 in range(0, n_absorb, CHUNK):
        rows = s0 + offs_c
        ok = (rows[:, None] < n_absorb) & d_ok
        k = tl.load(k_base + rows[:, None] * stride_ks + offs_d[None, :], mask=ok, other=0.0)
        fk = _phi(k.to(tl.float32), ok, FEATURE)
        v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        state += tl.dot(tl.trans(fk), v, input_precision=PRECISION)
        z += tl.sum(fk, 0)

    for t0 in range(0, T, CHUNK):
        rows = t0 + offs_c
        q_ok = (rows[:, None] < T) & d_ok
        q = tl.load(q_base + rows[:, None] * stride_qt + offs_d[None, :], mask=q_ok, other=0.0)
        fq = _phi(q.to(tl.float32), q_ok, FEATURE)
        num = tl.dot(fq, state, input_precision=PRECISION)  # (CHUNK, BLOCK_D)
        den = tl.sum(fq * z[None, :], 1)
        if CAUSAL:
            krows = PREFIX + rows  # the keys aligned with this chunk's queries
            k_ok = (rows[:, None] < T) & d_ok
            k = tl.load(k_base + krows[:, None] * stride_ks + offs_d[None, :], mask=k_ok, other=0.0)
            fk = _phi(k.to(tl.float32), k_ok, FEATURE)
            v = tl.load(v_base + krows[:, None] * stride_vs + offs_d[None, :], mask=k_ok, other=0.0).to(tl.float32)
            a = tl.dot(fq, tl.trans(fk), input_precision=PRECISION)  # (CHUNK, CHUNK)
            a = tl.where(offs_c[None, :] <= offs_c[:, None], a, 0.0)
            num += tl.dot(a, v, input_precision=PRECISION)
            den += tl.sum(a, 1)
            state += tl.dot(tl.trans(fk), v, input_precision=PRECISION)
            z += tl.sum(fk, 0)
        out = num / tl.where(den > 0, den, 1.0)[:, None]
        tl.store(o_base + rows[:, None] * stride_ot + offs_d[None, :], out.to(O.dtype.element_ty), mask=q_ok)
