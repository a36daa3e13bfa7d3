"""sliding_window_attention kernel vs reference vs float64."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from kernels_common import DTYPES, LENGTHS, check, dtype_id, rand  # noqa: E402
from lceval.kernels import sliding_window_attention  # noqa: E402
from lceval.kernels.sliding_window import sliding_window_attention_ref  # noqa: E402


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("window", [1, 17, 4096], ids=["w1", "w17", "w_ge_T"])
def test_lengths_windows(T, window):
    q, k, v = rand(1, 2, 1, T, T, 32)
    check(sliding_window_attention(q, k, v, window), sliding_window_attention_ref, q, k, v, window=window)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("D", [16, 80])
def test_dtypes_head_dims_noncausal(dtype, D):
    q, k, v = rand(1, 4, 2, 129, 129, D, dtype)
    for causal in (True, False):
        out = sliding_window_attention(q, k, v, 40, causal=causal)
        check(out, sliding_window_attention_ref, q, k, v, window=40, causal=causal)


def test_window_validation():
    q, k, v = rand(1, 1, 1, 8, 8, 16)
    with pytest.raises(ValueError, match="window must be >= 1"):
        sliding_window_attention(q, k, v, 0)
