"""The built-in reference model: a small decoder-only transformer.

Short and readable on purpose (nanoGPT-like). Attention and position encoding
are pluggable: the position encoding is fixed when the model is trained, the
attention variant can be swapped at evaluation time (``model.attention = ...``).
Each block starts with a short causal depthwise convolution (a "token shift"),
which makes associative recall learnable in a few hundred steps on a CPU.
"""

from __future__ import annotations

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lceval.attention import Attention
from lceval.position import PositionEncoding, build_position


class Architecture(pydantic.BaseModel):
    """Shape of a reference model; stored in its card."""

    model_config = pydantic.ConfigDict(extra="forbid")

    vocab_size: int = pydantic.Field(gt=0)
    d_model: int = pydantic.Field(64, gt=0)
    n_layers: int = pydantic.Field(2, gt=0)
    n_heads: int = pydantic.Field(2, gt=0)
    n_kv_heads: int | None = pydantic.Field(None, gt=0)
    mlp_ratio: int = pydantic.Field(4, gt=0)
    position: str = "rotary"
    max_length: int = pydantic.Field(2048, gt=0, description="rows of a learned position table")
    conv_kernel: int = pydantic.Field(3, ge=0, description="token-shift width; 0 disables it")

    @pydantic.model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % (self.n_kv_heads or self.n_heads):
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        return self


class ShortConv(nn.Module):
    """Causal depthwise convolution over time: x (B, T, d) -> (B, T, d)."""

    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d, d, kernel, groups=d)

    def forward(self, x: Tensor) -> Tensor:
        y = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))  # (B, d, T + k - 1)
        return self.conv(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, arch: Architecture, model: ReferenceTransformer):
        super().__init__()
        self.h = arch.n_heads
        self.h_kv = arch.n_kv_heads or arch.n_heads
        self.dh = arch.d_model // arch.n_heads
        self.q = nn.Linear(arch.d_model, self.h * self.dh, bias=False)
        self.kv = nn.Linear(arch.d_model, 2 * self.h_kv * self.dh, bias=False)
        self.out = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self._model = [model]  # back-reference without registering a submodule

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        model = self._model[0]
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)  # (B, H, T, Dh)
        k, v = self.kv(x).view(B, T, 2, self.h_kv, self.dh).permute(2, 0, 3, 1, 4)  # (B, H_kv, T, Dh)
        q, k = model.position.rotate(q, k)
        y = model.attention(q, k, v, causal=True, score_mod=model.position.score_mod())  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, arch: Architecture, model: ReferenceTransformer):
        super().__init__()
        d = arch.d_model
        self.conv = ShortConv(d, arch.conv_kernel) if arch.conv_kernel else None
        self.ln0 = nn.LayerNorm(d) if self.conv else None
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(arch, model)
        self.mlp = nn.Sequential(nn.Linear(d, arch.mlp_ratio * d), nn.GELU(), nn.Linear(arch.mlp_ratio * d, d))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            x = x + self.conv(self.ln0(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ReferenceTransformer(nn.Module):
    def __init__(self, arch: Architecture, attention: Attention):
        super().__init__()
        self.arch = arch
        self.attention = attention
        self.embed = nn.Embedding(arch.vocab_size, arch.d_model)
        self.position: PositionEncoding = build_position(arch.position, arch.d_model, arch.n_heads, arch.max_length)
        self.blocks = nn.ModuleList(Block(arch, self) for _ in range(arch.n_layers))
        self.ln_f = nn.LayerNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.apply(_init)

    def hidden(self, ids: Tensor) -> Tensor:
        """Final hidden states (B, T, d) for token ids (B, T)."""
        x = self.position.embed(self.embed(ids))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits_at(self, hidden: Tensor, index: Tensor) -> Tensor:
        """Logits only where needed: hidden (B, T, d), index (B, K) -> (B, K, V)."""
        picked = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.head(picked)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits at every position (B, T, V); use ``logits_at`` when only a few are needed."""
        return self.head(self.hidden(ids))


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
