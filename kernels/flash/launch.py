"""Launchers for the online-softmax kernel: flash (dense) here, shared by the window and sparse ops."""

from __future__ import annotations

import functools
import os

import torch
import triton

from lceval.kernels.flash.kernel import LOG2E, MODE_DENSE, MODE_LAYOUT, MODE_WINDOW, attention_fwd_kernel

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


H100_SMEM = 232448  # shared memory one program may use on an H100 (what Triton checks against there)


@functools.cache
def _smem_limit(device_index: int) -> int:
    try:
        return int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - no driver (e.g. a CPU-only check): assume the GPU the tiles were tuned on
        return H100_SMEM


def _smem(block_m: int, block_n: int, block_d: int, elt: int, stages: int) -> int:
    """Shared memory of one program: the q tile plus ``stages`` buffered k and v tiles (as measured on an H100)."""
    return (block_m + 2 * stages * block_n) * block_d * elt


def _fit(tiles: tuple[int, int, int, int], block_d: int, elt: int, limit: int, fixed: bool) -> tuple[int, int, int, int]:
    """Fewer pipeline stages, then (unless the tiles are ``fixed``) smaller tiles, until a program fits in ``limit``.

    float32 needs twice the bytes of bf16: hd 128 at (128, 128, 3 stages) fits an H100 in bf16 only.
    """
    m, n, w, st = tiles
    floor = 1 if fixed else 2
    while st > floor and _smem(m, n, block_d, elt, st) > limit:
        st -= 1
    if not fixed and _smem(m, n, block_d, elt, st) > limit and (m, n) != (64, 64):
        return _fit((64, 64, 4, 2), block_d, elt, limit, fixed)
    while st > 1 and _smem(m, n, block_d, elt, st) > limit:
        st -= 1
    return m, n, w, st


def _tiles(D: int, mode: int, block: int | None, elt: int = 2, limit: int = H100_SMEM) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), tuned on an H100 in bf16 (benchmarks/kernels.py --tune).

    ``LCEVAL_FLASH_TILES=m,n,w,s`` overrides them for flash and sliding window, and
    ``LCEVAL_SPARSE_TILES=w,s`` the warps and stages of block sparse (whose tiles are its blocks).
    Stages (and, for flash, tiles) shrink until a program fits in shared memory at the element size ``elt``.
    """
    if interpreting():
        return (block or 32), (block or 32), 4, 1
    block_d = max(16, 1 << (D - 1).bit_length())
    if mode == MODE_LAYOUT:
        override = os.environ.get("LCEVAL_SPARSE_TILES")
        if override:
            w, st = (int(x) for x in override.split(","))
            return block, block, w, st
        return _fit((block, block, 8 if block >= 128 and D > 64 else 4, 3), block_d, elt, limit, fixed=True)
    override = os.environ.get("LCEVAL_FLASH_TILES")
    if override:
        m, n, w, st = (int(x) for x in override.split(","))
        return m, n, w, st
    if mode == MODE_WINDOW:  # short rows of tiles: smaller query tiles, more programs in flight
        return _fit((64, 64, 4, 3), block_d, elt, limit, fixed=False)
    return _fit((128, 128, 8, 3) if D > 64 else (64, 64, 4, 3), block_d, elt, limit, fixed=False)


def launch(q, k, v, *, mode, causal, scale, window=0, lut=None, lut_n=None, block=None, return_lse=False):
    """Run the online-softmax kernel; returns out (B, H, T, D) and, if asked, lse (B, H, T) in float32."""
    check_inputs(q, k, v)
    q, k, v = last_dim_contiguous(q, k, v)
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32) if return_lse else out
    limit = _smem_limit(q.device.index or 0) if q.is_cuda else H100_SMEM
    BLOCK_M, BLOCK_N, warps, stages = _tiles(D, mode, block, q.element_size(), limit)
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
        num_warps=warps, num_stages=stages,
    )
    return (out, lse) if return_lse else out


def flash_attention(q, k, v, causal=True, scale=None, return_lse=False):
    """Exact attention, tiled with online softmax. Causal tiles above the diagonal are never visited.

    q (B, H, T, D); k, v (B, H_kv, S, D). Causal is bottom-right aligned.
    With ``return_lse`` also returns the natural-log log-sum-exp of each row (B, H, T).
    """
    return launch(q, k, v, mode=MODE_DENSE, causal=causal, scale=scale, return_lse=return_lse)
