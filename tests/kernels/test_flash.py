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
    qi = torch.arange(70, device=q.device)[:, None] - 40
    s = s.masked_fill(torch.arange(30, device=q.device)[None, :] > qi, float("-inf"))
    want = torch.logsumexp(s[:, :, 40:], -1)
    assert (lse[:, :, 40:].double() - want).abs().max() < 1e-4


def test_tiles_fit_shared_memory(monkeypatch):
    """The tile choice shrinks stages, then tiles, so every dtype and head dim fits (fp32 hd80 overflowed an H100)."""
    from lceval.kernels.flash.kernel import MODE_DENSE, MODE_LAYOUT, MODE_WINDOW
    from lceval.kernels.flash.launch import H100_SMEM, _smem, _tiles

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("LCEVAL_FLASH_TILES", raising=False)
    monkeypatch.delenv("LCEVAL_SPARSE_TILES", raising=False)
    for limit in (H100_SMEM, 101376):  # an H100, and a GPU with 99 KiB per block
        for D in (16, 32, 64, 80, 128):
            block_d = max(16, 1 << (D - 1).bit_length())
            for elt in (2, 4):
                for mode, block in ((MODE_DENSE, None), (MODE_WINDOW, None), (MODE_LAYOUT, 64)):
                    m, n, w, st = _tiles(D, mode, block, elt, limit)
                    assert st >= 1 and _smem(m, n, block_d, elt, st) <= limit, (limit, D, elt, mode)
                    if block:
                        assert (m, n) == (block, block)  # block-sparse tiles are the layout's blocks
    assert _tiles(128, MODE_DENSE, None, 2, H100_SMEM) == (128, 128, 8, 3)  # the tuned bf16 config is kept
    assert _tiles(128, MODE_DENSE, None, 4, H100_SMEM) == (64, 64, 4, 2)
