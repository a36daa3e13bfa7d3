"""Helpers for the kernel tests: devices, dtypes, tolerances, fresh random inputs."""

from __future__ import annotations

import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# float32 on CPU (interpreter) and GPU (IEEE dots); 16-bit types by their rounding
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
LENGTHS = [1, 63, 65, 129, 1000]


def dtype_id(dt) -> str:
    return str(dt).removeprefix("torch.")


def rand(B, H, H_kv, T, S, D, dtype=torch.float32):
    q = torch.randn(B, H, T, D, device=DEVICE).to(dtype)
    k = torch.randn(B, H_kv, S, D, device=DEVICE).to(dtype)
    v = torch.randn(B, H_kv, S, D, device=DEVICE).to(dtype)
    return q, k, v


def check(kernel_out, ref_fn, q, k, v, **kw):
    """Kernel vs its torch reference vs the reference run in float64, at the dtype's tolerance."""
    tol = TOL[q.dtype]
    exact = ref_fn(q.double(), k.double(), v.double(), **kw)
    ref = ref_fn(q, k, v, **kw)
    assert torch.isfinite(kernel_out).all()
    assert (kernel_out.double() - exact).abs().max().item() <= tol
    assert (ref.double() - exact).abs().max().item() <= tol
    assert (kernel_out.double() - ref.double()).abs().max().item() <= 2 * tol




def strided_kv(k, v):
    """The same values as k, v, but v a non-contiguous view with other strides than k (as in a fused kv proj)."""
    B, H_kv, S, D = k.shape
    kv = torch.stack([k, v], dim=2).transpose(1, 3).contiguous()  # (B, S, 2, H_kv, D)
    return k.contiguous(), kv[:, :, 1].transpose(1, 2)  # v: (B, H_kv, S, D) with time stride 2*H_kv*D
