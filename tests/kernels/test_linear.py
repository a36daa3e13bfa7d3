"""linear_attention kernel vs reference vs float64."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels_common import DTYPES, LENGTHS, check, dtype_id, rand  # noqa: E402
from lceval.kernels import linear_attention  # noqa: E402
from lceval.kernels.linear import linear_attention_ref  # noqa: E402


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_lengths_gqa(T, causal):
    q, k, v = rand(1, 4, 2, T, T, 32)
    check(linear_attention(q, k, v, causal=causal), linear_attention_ref, q, k, v, causal=causal)


@pytest.mark.parametrize("feature_map", ["elu1", "relu", "softplus"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("D", [16, 80])
def test_feature_maps_dtypes_dims(feature_map, dtype, D):
    q, k, v = rand(1, 2, 1, 97, 97, D, dtype)
    out = linear_attention(q, k, v, feature_map=feature_map)
    check(out, linear_attention_ref, q, k, v, feature_map=feature_map)


@pytest.mark.parametrize("T,S", [(33, 129), (129, 33)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_cross_shapes(T, S, causal):
    q, k, v = rand(1, 2, 2, T, S, 32)
    out = linear_attention(q, k, v, causal=causal)
    check(out, linear_attention_ref, q, k, v, causal=causal)
    if causal and T > S:
        assert out[:, :, : T - S].abs().max() == 0


def test_head_dim_128_two_value_tiles():
    q, k, v = rand(1, 2, 1, 70, 70, 128)
    check(linear_attention(q, k, v), linear_attention_ref, q, k, v)


def test_relu_rows_with_zero_mass_are_zero():
    q, k, v = rand(1, 1, 1, 40, 40, 16)
    q[:, :, :5] = -1.0  # relu(q) = 0: no mass, output must be 0, not NaN
    out = linear_attention(q, k, v, feature_map="relu")
    assert torch.isfinite(out).all() and out[:, :, :5].abs().max() == 0
