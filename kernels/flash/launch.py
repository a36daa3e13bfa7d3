"""Launchers for the online-softmax kernel: flash (dense) here, shared by the window and sparse ops."""

from __future__ import annotations

import os

import torch
import triton

from lceval.kernels.flash.kernel import LOG2E, MODE_DENSE, attention_fwd_kernel

SUPPORTED = {torch.float16, torch.bfloat16, torch.float32}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_inputs(q, k, v):
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q (B,H,T,D), k and v (B,H_kv,S,D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED:
        raise ValueError(f"q, k, v must share one dtype of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 16 <= q.shape[3] <= 128:
        raise ValueError(f"head dim {q.shape[3]} outside the supported 16..128")
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for testing on a CPU)")
    if interpreting() and q.dtype == torch.bfloat16:
        raise ValueError("bfloat16 is not supported by the Triton interpreter; use float32 or float16 on a CPU")


def last_dim_contiguous(*xs):
    """The tensors with unit stride on the last dim (the kernels index features directly)."""
    return tuple(x if x.stride(-1) == 1 else x.contiguous() for x in xs)


def strides3(x) -> tuple[int, int, int]:
    """Batch, head and time strides of a (B, H, T, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def dot_precision(dtype) -> str:
    """float32 inputs keep full precision (IEEE), so results match a float32 oracle; 16-bit inputs use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _tiles(D: int, mode_block: int | None):
    if mode_block is not None:  # block-sparse: tiles are the layout's blocks
        return mode_block, mode_block, 8 if mode_block >= 128 and D > 64 else 4
    if interpreting():
        return 32, 32, 4
    return (128, 64, 8) if D > 64 else (128, 64, 4)


def launch(q, k, v, *, mode, causal, scale, window=0, lut=None, lut_n=None, block=None, return_lse=False):
    """Run the online-softmax kernel; returns out (B, H, T, D) and, if asked, lse (B, H, T) in float32."""
    check_inputs(q, k, v)
    q, k, v = last_dim_contiguous(q, k, v)
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32) if return_lse else out
    BLOCK_M, BLOCK_N, warps = _tiles(D, block)
    scale = D**-0.5 if scale is None else scale
    if lut is None:
        lut = lut_n = torch.zeros(1, 1, 1, dtype=torch.int32, device=q.device)
    grid = (triton.cdiv(T, BLOCK_M), B * H)
    attention_fwd_kernel[grid](
        q, k, v, out, lse, lut, lut_n,
        *strides3(q), *strides3(k), *strides3(v), *strides3(out),
        lut.stride(0), lut.stride(1), lut_n.stride(0),
        H, H // H_kv, T, S, S - T, window, scale * LOG2E,
        D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        MODE=mode, CAUSAL=causal, RETURN_LSE=return_lse, LUT_H=lut.shape[0], PRECISION=dot_precision(q.dtype),
        num_warps=warps, num_stages=2,
    )
    return (out, lse) if return_lse else out


def flash_attention(q, k, v, causal=True, scale=None, return_lse=False):
    """Exact attention, tiled with online softmax. Causal tiles above the diagonal are never visited.

    q (B, H, T, D); k, v (B, H_kv, S, D). Causal is bottom-right aligned.
    With ``return_lse`` also returns the natural-log log-sum-exp of each row (B, H, T).
    """
    return launch(q, k, v, mode=MODE_DENSE, causal=causal, scale=scale, return_lse=return_lse)
