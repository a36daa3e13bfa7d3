"""Linear-attention launcher: a prefix scan then parallel chunk outputs if causal; summaries then outputs if not."""

from __future__ import annotations

import os

import torch
import triton

from lceval.attention.features import FEATURE_IDS
from lceval.kernels.flash.launch import check_inputs, dot_precision, interpreting, last_dim_contiguous, strides3
from lceval.kernels.linear.kernel import (
    chunk_causal_output_kernel,
    chunk_output_kernel,
    chunk_prefix_kernel,
    chunk_state_kernel,
)


def linear_attention(q, k, v, feature_map="elu1", causal=True, chunk=None):
    """out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over visible j; float32 state.

    Causal is bottom-right aligned (query i sees keys j <= i + S - T); rows with
    no visible key return zeros.
    """
    check_inputs(q, k, v)
    if feature_map not in FEATURE_IDS:
        raise ValueError(f"feature_map must be one of {', '.join(FEATURE_IDS)}; got {feature_map!r}")
    q, k, v = last_dim_contiguous(q, k, v)
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    if causal and T > S:  # the first T - S queries see no key
        skip = T - S
        if S > 0:
            out[:, :, skip:] = linear_attention(q[:, :, skip:], k, v, feature_map, causal, chunk)
        return out
    C = chunk or (32 if interpreting() else 64)
    block_d = max(16, triton.next_power_of_2(D))
    block_dv = min(block_d, 64)
    warps, stages = 4, 2
    override = os.environ.get("LCEVAL_LINEAR_TILES")  # "chunk,block_dv,warps,stages": for tuning
    if override and not interpreting():
        c_, block_dv, warps, stages = (int(x) for x in override.split(","))
        C = chunk or c_
    n_dv = triton.cdiv(D, block_dv)
    common = dict(D=D, BLOCK_D=block_d, BLOCK_DV=block_dv, CHUNK=C, FEATURE=FEATURE_IDS[feature_map],
                  PRECISION=dot_precision(q.dtype), num_warps=warps)
    if causal:  # the prefix scan, then all chunks' outputs in parallel
        n = triton.cdiv(T, C)
        hs = torch.empty(B, H_kv, max(n, 1), D, D, device=q.device, dtype=torch.float32)
        z = torch.empty(B, H_kv, max(n, 1), D, device=q.device, dtype=torch.float32)
        lowp = q.dtype != torch.float32
        chunk_prefix_kernel[(B * H_kv, n_dv)](k, v, hs, z, *strides3(k), *strides3(v), H_kv, T, S - T, n,
                                              LOWP=lowp, num_stages=stages, **common)
        chunk_causal_output_kernel[(n, B * H, n_dv)](
            q, k, v, out, hs, z, *strides3(q), *strides3(k), *strides3(v), *strides3(out),
            H, H // H_kv, T, S - T, n, LOWP=lowp, num_stages=stages, **common)
        return out
    n = triton.cdiv(S, C)
    state = torch.zeros(B, H_kv, max(n, 1), D, D, device=q.device, dtype=torch.float32)
    z = torch.zeros(B, H_kv, max(n, 1), D, device=q.device, dtype=torch.float32)
    if n > 0:
        chunk_state_kernel[(n, B * H_kv, n_dv)](k, v, state, z, *strides3(k), *strides3(v), H_kv, S, 0, n, **common)
    state, z = state.sum(2, keepdim=True).contiguous(), z.sum(2, keepdim=True).contiguous()
    chunk_output_kernel[(triton.cdiv(T, C), B * H, n_dv)](
        q, k, v, out, state, z, *strides3(q), *strides3(k), *strides3(v), *strides3(out),
        H, H // H_kv, T, 1, **common)
    return out
