from lceval.kernels.sliding_window.launch import sliding_window_attention
from lceval.kernels.sliding_window.reference import sliding_window_attention_ref

__all__ = ["sliding_window_attention", "sliding_window_attention_ref"]
