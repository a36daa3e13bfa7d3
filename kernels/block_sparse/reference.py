"""Plain-torch reference of block-sparse attention: the dense oracle with the layout's mask."""

from __future__ import annotations

from lceval.attention.core import and_masks, block_mask, causal_mask, dense_attention


def layout_mask(layout, block: int):
    """The element mask of a (H or 1, query blocks, key blocks) bool layout: (T', S) -> (H or 1, T', S)."""
    return block_mask(lambda qb, kb: layout[:, qb, kb], block)


def block_sparse_attention_ref(q, k, v, layout, block, causal=True, scale=None):
    """Query block m sees key block n where layout[h, m, n]; causal (bottom-right) inside."""
    visible = layout_mask(layout.bool(), block)
    return dense_attention(q, k, v, mask=and_masks(visible, causal_mask) if causal else visible, scale=scale)
