from lceval.kernels.flash.launch import flash_attention
from lceval.kernels.flash.reference import flash_attention_ref

__all__ = ["flash_attention", "flash_attention_ref"]
