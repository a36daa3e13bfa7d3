"""flash_attention kernel vs reference vs float64."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels_common import DTYPES, LENGTHS, check, dtype_id, rand  # noqa: E402
from lceval.kernels import flash_attention  # noqa: E402
from lceval.kernels.flash import flash_attention_ref  # noqa: E402


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_lengths_gqa(T, causal):
    q, k, v = rand(1, 4, 2, T, T, 32)
    check(flash_attention(q, k, v, causal=causal), flash_attention_ref, q, k, v, causal=causal)


@pytest.mark.parametrize("D", [16, 64, 80, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_head_dims_and_dtypes(D, dtype):
    q, k, v = rand(2, 2, 1, 65, 65, D, dtype)
    check(flash_attention(q, k, v, causal=True), flash_attention_ref, q, k, v, causal=True)


@pytest.mark.parametrize("T,S,causal", [(7, 129, False), (129, 7, False), (33, 129, True)])
def test_cross_shapes(T, S, causal):
    q, k, v = rand(1, 2, 2, T, S, 32)
    check(flash_attention(q, k, v, causal=causal, scale=0.3), flash_attention_ref, q, k, v, causal=causal, scale=0.3)


def test_rows_without_keys_are_zero_and_lse():
    q, k, v = rand(1, 2, 1, 70, 30, 32)  # causal with T > S: the first 40 rows see nothing
    out, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.isfinite(out).all() and out[:, :, :40].abs().max() == 0
    assert torch.isneginf(lse[:, :, :40]).all()
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) / 32**0.5
    qi = torch.arange(70)[:, None] - 40
    s = s.masked_fill(torch.arange(30)[None, :] > qi, float("-inf"))
    want = torch.logsumexp(s[:, :, 40:], -1)
    assert (lse[:, :, 40:].double() - want).abs().max() < 1e-4
