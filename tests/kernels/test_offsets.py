"""Kernel pointer offsets are 64-bit: a batch that starts past 2**31 elements is read where it lies.

The tensors are strided views into one lazily allocated buffer past 2**31 elements (the
pages between the batches are never touched), run under Triton's interpreter, which computes the
same addresses a GPU would.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lceval.kernels import flash_attention, linear_attention  # noqa: E402
from lceval.kernels.flash.reference import flash_attention_ref  # noqa: E402
from lceval.kernels.linear.reference import linear_attention_ref  # noqa: E402

STRIDE = 2**30 + 64  # a 32-bit stride; batch 2 starts at 2 * STRIDE > 2**31 elements


def far_apart(T=24, D=16):
    try:  # ~4 GiB of address space; only the pages of the three batches are touched
        big = torch.empty(2 * STRIDE + 3 * 4096, dtype=torch.float16)
    except RuntimeError:
        pytest.skip("cannot reserve 4 GiB of address space here")
    g = torch.Generator().manual_seed(2)
    views = []
    for i in range(3):  # q, k, v at different offsets
        view = big.as_strided((3, 1, T, D), (STRIDE, T * D, D, 1), storage_offset=i * 4096)
        view.copy_(torch.randn(3, 1, T, D, generator=g))
        views.append(view)
    return views


def test_flash_reads_a_batch_beyond_2_31_elements():
    q, k, v = far_apart()
    got = flash_attention(q, k, v, causal=True)
    want = flash_attention_ref(q.clone(), k.clone(), v.clone(), causal=True)
    assert (got.float() - want.float()).abs().max() < 3e-3


def test_linear_reads_a_batch_beyond_2_31_elements():
    q, k, v = far_apart()
    got = linear_attention(q, k, v, causal=True, chunk=16)
    want = linear_attention_ref(q.clone(), k.clone(), v.clone(), feature_map="elu1", causal=True)
    assert (got.float() - want.float()).abs().max() < 3e-3
