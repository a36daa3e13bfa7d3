from lceval.kernels.linear.launch import linear_attention
from lceval.kernels.linear.reference import linear_attention_ref

__all__ = ["linear_attention", "linear_attention_ref"]
