from lceval.kernels.block_sparse.launch import BlockLUT, block_sparse_attention, layout_lut
from lceval.kernels.block_sparse.reference import block_sparse_attention_ref

__all__ = ["BlockLUT", "block_sparse_attention", "block_sparse_attention_ref", "layout_lut"]
