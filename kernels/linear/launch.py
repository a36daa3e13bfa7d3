"""Linear-attention launcher."""

from __future__ import annotations

import torch

from lceval.kernels.flash.launch import check_inputs, dot_precision, interpreting
from lceval.kernels.linear.kernel import FEATURE_MAPS, linear_attention_fwd_kernel


def linear_attention(q, k, v, feature_map="elu1", causal=True, chunk=None):
    """out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over visible j; float32 state.

    Causal is bottom-right aligned (query i sees keys j <= i + S - T); rows with
    no visible key return zeros.
    """
    check_inputs(q, k, v)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}; got {feature_map!r}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    B, H, T, D = q.shape
    S = k.shape[2]
    out = torch.zeros_like(q)
    if causal and T > S:  # the first T - S queries see no key
        skip = T - S
        if S > 0:
            out[:, :, skip:] = linear_attention(q[:, :, skip:], k, v, feature_map, causal, chunk)
        return out
    chunk = chunk or (32 if interpreting() else 64)
    block_d = max(16, 1 << (D - 1).bit_length())
    linear_attention_fwd_kernel[(B * H,)](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, H // k.shape[1], T, S, S - T if causal else 0,
        D=D, BLOCK_D=block_d, CHUNK=chunk, FEATURE=FEATURE_MAPS[feature_map], CAUSAL=causal,
        PRECISION=dot_precision(q.dtype), num_warps=4 if D <= 64 else 8,
    )
    return out
