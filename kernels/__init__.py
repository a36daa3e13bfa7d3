"""Triton attention kernels (installed as ``lceval.kernels``)."""
