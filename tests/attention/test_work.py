"""Sliding window and sparse visit only the keys they can see (work proportional to visible keys)."""

from __future__ import annotations

import pytest
import torch

import lceval.attention.sparse as sparse_mod
from lceval.attention import build_attention


def visited_keys(monkeypatch, name, params, T, band_bytes=None):
    """Sum over query blocks of the key positions the engine (blocked or banded) is asked to visit."""
    seen = {"keys": 0, "blocks": 0}
    real = sparse_mod.blocked_attention
    real_gather = sparse_mod.gathered_attention

    def gather_spy(q, k, v, *, keys, block_q, **kw):
        def counted(q0, q1):
            sel = keys(q0, q1)
            n = (sel.stop - sel.start) if isinstance(sel, slice) else len(sel)
            seen["keys"] += n * (q1 - q0)
            seen["blocks"] += 1
            return sel

        return real_gather(q, k, v, keys=counted, block_q=block_q, **kw)

    def spy(q, k, v, *, key_blocks, block_q, **kw):
        def counted(q0, q1):
            for k0, k1, needs_mask in key_blocks(q0, q1):
                seen["keys"] += (k1 - k0) * (q1 - q0)
                seen["blocks"] += 1
                yield k0, k1, needs_mask

        return real(q, k, v, key_blocks=counted, block_q=block_q, **kw)

    with monkeypatch.context() as m:
        m.setattr(sparse_mod, "blocked_attention", spy)
        m.setattr(sparse_mod, "gathered_attention", gather_spy)
        if band_bytes is not None:
            m.setattr(sparse_mod, "BAND_BYTES", band_bytes)
        q = torch.randn(1, 1, T, 16)
        build_attention(name, **params)(q, q, q, causal=True)
    return seen


@pytest.mark.parametrize("band_bytes", [None, 0], ids=["gathered", "blocked"])
def test_sliding_window_work_grows_with_n_times_w(monkeypatch, band_bytes):
    W, T = 64, 4096
    seen = visited_keys(monkeypatch, "sliding_window", {"window": W}, T, band_bytes)
    # each query row is offered at most its window plus one query block of slack
    assert 0 < seen["keys"] <= T * (W + 64)
    # doubling the length doubles the work (quadratic work would quadruple it)
    half = visited_keys(monkeypatch, "sliding_window", {"window": W}, T // 2, band_bytes)
    assert 1.9 <= seen["keys"] / half["keys"] <= 2.1


def test_sparse_work_proportional_to_visible_blocks(monkeypatch):
    params = {"block": 64, "local_blocks": 2, "global_blocks": 1}
    T = 4096
    n = T // 64
    visible = int(build_attention("sparse", **params).layout(n).sum()) * 64 * 64  # (query, key) pairs it can see
    blocked = visited_keys(monkeypatch, "sparse", params, T, band_bytes=0)
    assert blocked["keys"] == visible  # the blocked engine visits exactly the layout's nonzero blocks
    gathered = visited_keys(monkeypatch, "sparse", params, T)
    # the gathered engine offers each pair of query blocks the union of their blocks: within 1.5x of the layout
    assert visible <= gathered["keys"] <= 1.5 * visible
    double = visited_keys(monkeypatch, "sparse", params, 2 * T)
    assert 1.9 <= double["keys"] / gathered["keys"] <= 2.1  # linear in the length


def test_plot_layout(tmp_path):
    """The report draws a layout: visible blocks dark, hidden ones light."""
    import matplotlib.image

    from lceval.report.figures import layout_plot

    attn = build_attention("sparse", block=16, local_blocks=3, global_blocks=1, stride=4)
    layout_plot(attn, 12, tmp_path / "layout.png")
    assert (tmp_path / "layout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(tmp_path / "layout.png")[..., :3].mean(-1)
    assert pixels.min() < 0.2 and pixels.max() > 0.9
