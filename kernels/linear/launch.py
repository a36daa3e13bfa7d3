"""Linear-attention launcher: chunk summaries, an exclusive cumsum, then chunk outputs."""

from __future__ import annotations

import torch
import triton

from lceval.kernels.flash.launch import check_inputs, dot_precision, interpreting, last_dim_contiguous, strides3
from lceval.kernels.linear.kernel import FEATURE_MAPS, chunk_output_kernel, chunk_state_kernel


def linear_attention(q, k, v, feature_map="elu1", causal=True, chunk=None):
    """out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over visible j; float32 state.

    Causal is bottom-right aligned (query i sees keys j <= i + S - T); rows with
    no visible key return zeros.
    """
    check_inputs(q, k, v)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}; got {feature_map!r}")
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
    n_dv = triton.cdiv(D, block_dv)
    common = dict(D=D, BLOCK_D=block_d, BLOCK_DV=block_dv, CHUNK=C, FEATURE=FEATURE_MAPS[feature_map],
                  PRECISION=dot_precision(q.dtype), num_warps=4)

    def summaries(key_start: int, n_keys: int):
        """Per key chunk: (B, H_kv, n, D, D) states and (B, H_kv, n, D) normalisers."""
        n = triton.cdiv(n_keys, C)
        state = torch.empty(B, H_kv, max(n, 1), D, D, device=q.device, dtype=torch.float32)
        z = torch.empty(B, H_kv, max(n, 1), D, device=q.device, dtype=torch.float32)
        if n == 0:
            return state.zero_(), z.zero_()
        chunk_state_kernel[(n, B * H_kv, n_dv)](k, v, state, z, *strides3(k), *strides3(v),
                                                H_kv, n_keys, key_start, n, **common)
        return state, z

    prefix = S - T if causal else 0
    if causal:
        state, z = summaries(prefix, T)  # chunks aligned with the query chunks
        state = torch.cumsum(state, dim=2) - state  # exclusive: what every earlier chunk adds
        z = torch.cumsum(z, dim=2) - z
        if prefix > 0:  # keys before the first query are visible to all of them
            s0, z0 = summaries(0, prefix)
            state += s0.sum(2, keepdim=True)
            z += z0.sum(2, keepdim=True)
    else:
        state, z = summaries(0, S)
        state, z = state.sum(2, keepdim=True), z.sum(2, keepdim=True)
    n_chunks = state.shape[2]
    chunk_output_kernel[(triton.cdiv(T, C), B * H, n_dv)](
        q, k, v, out, state.contiguous(), z.contiguous(),
        *strides3(q), *strides3(k), *strides3(v), *strides3(out),
        H, H // H_kv, T, prefix, n_chunks, CAUSAL=causal, **common,
    )
    return out
