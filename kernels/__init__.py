"""Triton attention kernels (installed as ``lceval.kernels``), one folder per op.

Each folder holds the Triton kernel, its launcher and a plain-torch reference.
The three softmax ops share one online-softmax kernel (``flash/kernel.py``) and
differ in which key tiles it visits; linear attention has its own kernel.

    q: (B, H, T, D); k, v: (B, H_kv, S, D); out: (B, H, T, D)
    flash_attention(q, k, v, causal=True, scale=None, return_lse=False)
    sliding_window_attention(q, k, v, window, scale=None)
    block_sparse_attention(q, k, v, layout, block, causal=True, scale=None)
    linear_attention(q, k, v, feature_map="elu1", causal=True)

They need CUDA tensors; on a CPU they run only under TRITON_INTERPRET=1 (tests).
Triton is imported on first use, so ``import lceval.kernels`` costs nothing.
"""

from __future__ import annotations

_EXPORTS = {
    "flash_attention": "lceval.kernels.flash",
    "sliding_window_attention": "lceval.kernels.sliding_window",
    "block_sparse_attention": "lceval.kernels.block_sparse",
    "linear_attention": "lceval.kernels.linear",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


def available() -> bool:
    """True when Triton is importable and a CUDA device is present."""
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


__all__ = list(_EXPORTS) + ["available"]
