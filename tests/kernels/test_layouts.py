"""Every kernel reads k and v through their own strides (v a strided view, as in the model)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels_common import check, rand, strided_kv  # noqa: E402
from lceval.kernels import block_sparse_attention, flash_attention, linear_attention, sliding_window_attention  # noqa: E402
from lceval.kernels.block_sparse import block_sparse_attention_ref  # noqa: E402
from lceval.kernels.flash import flash_attention_ref  # noqa: E402
from lceval.kernels.linear import linear_attention_ref  # noqa: E402
from lceval.kernels.sliding_window import sliding_window_attention_ref  # noqa: E402


def test_strided_views():
    q, k, v = rand(2, 4, 2, 77, 77, 32)
    k, v = strided_kv(k, v)
    assert v.stride() != k.stride() and not v.is_contiguous()
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, D) memory, as the model's q view
    lay = torch.ones(1, 3, 3, dtype=torch.bool).tril()
    check(flash_attention(q, k, v), flash_attention_ref, q, k, v)
    check(sliding_window_attention(q, k, v, 9), sliding_window_attention_ref, q, k, v, window=9)
    check(block_sparse_attention(q, k, v, lay, 32), block_sparse_attention_ref, q, k, v, layout=lay, block=32)
    check(linear_attention(q, k, v), linear_attention_ref, q, k, v)
