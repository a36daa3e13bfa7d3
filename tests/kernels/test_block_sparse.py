"""block_sparse_attention kernel vs reference vs float64, and its tile lookup table."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels_common import DTYPES, LENGTHS, check, dtype_id, rand  # noqa: E402
from lceval.kernels import block_sparse_attention  # noqa: E402
from lceval.kernels.block_sparse import block_sparse_attention_ref, layout_lut  # noqa: E402


def layout(kind: str, heads: int, nq: int, nk: int, seed: int = 0) -> torch.Tensor:
    m, n = torch.arange(nq)[:, None], torch.arange(nk)[None, :]
    if kind == "local":
        lay = (n <= m) & (n > m - 2)
    elif kind == "global":
        lay = ((n <= m) & (n > m - 2)) | (n < 1)
    elif kind == "strided":
        lay = (n == m) | (n % 3 == 0)
    else:  # random per head
        g = torch.Generator().manual_seed(seed)
        return torch.rand(heads, nq, nk, generator=g) < 0.4
    return lay[None].expand(heads if kind == "global" else 1, nq, nk).clone()


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("kind", ["local", "global", "strided", "random"])
def test_layouts_lengths(T, kind):
    block = 32
    n = -(-T // block)
    lay = layout(kind, 2, n, n)
    q, k, v = rand(1, 2, 1, T, T, 32)
    out = block_sparse_attention(q, k, v, lay, block)
    check(out, block_sparse_attention_ref, q, k, v, layout=lay.to(q.device), block=block)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("D", [16, 80])
def test_dtypes_head_dims_noncausal(dtype, D):
    lay = layout("random", 4, 5, 5, seed=3)
    q, k, v = rand(1, 4, 2, 129, 129, D, dtype)
    for causal in (True, False):
        out = block_sparse_attention(q, k, v, lay, 32, causal=causal)
        check(out, block_sparse_attention_ref, q, k, v, layout=lay.to(q.device), block=32, causal=causal)


def test_lut_visits_only_nonzero_blocks_and_marks_masking():
    lay = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 1]]], dtype=torch.bool)
    lut, counts = layout_lut(lay, 16, 64, 64, causal=True)[:2]
    # [n_full, n_all]: fully visible blocks (below the diagonal) are listed first, then the diagonal one (masked)
    assert counts[0].tolist() == [[0, 1], [1, 2], [0, 1], [2, 3]]
    assert lut[0, 3, :3].tolist() == [0, 2, 3]
    assert lut[0, 1, :2].tolist() == [0, 1]
    lut, counts = layout_lut(lay, 16, 60, 60, causal=False)[:2]  # the last query tile crosses the sequence end
    assert counts[0].tolist() == [[1, 1], [2, 2], [1, 1], [0, 3]]
    assert lut[0, 3, :3].tolist() == [0, 2, 3] and lut[0, 1, :2].tolist() == [0, 1]


def test_compiled_layout_is_reused_and_checked():
    lay = layout("random", 2, 5, 5, seed=4)
    q, k, v = rand(1, 2, 1, 70, 70, 16)
    compiled = layout_lut(lay.to(q.device), 16, 70, 70, causal=True)
    out = block_sparse_attention(q, k, v, compiled, 16)
    assert torch.equal(out, block_sparse_attention(q, k, v, lay, 16))
    with pytest.raises(ValueError, match="rebuild it with layout_lut"):
        block_sparse_attention(q, k, v, compiled, 16, causal=False)


def test_empty_layout_rows_give_zeros():
    lay = torch.zeros(1, 3, 3, dtype=torch.bool)
    lay[0, 2, 0] = True
    q, k, v = rand(1, 1, 1, 48, 48, 16)
    out = block_sparse_attention(q, k, v, lay, 16)
    assert out[:, :, :32].abs().max() == 0 and torch.isfinite(out).all()


def test_layout_validation():
    q, k, v = rand(1, 2, 2, 40, 40, 16)
    with pytest.raises(ValueError, match="layout must be"):
        block_sparse_attention(q, k, v, torch.ones(1, 2, 2, dtype=torch.bool), 16)
    with pytest.raises(ValueError, match="power of two"):
        block_sparse_attention(q, k, v, torch.ones(1, 2, 2, dtype=torch.bool), 24)
