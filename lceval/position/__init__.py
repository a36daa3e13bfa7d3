"""Position encodings: absolute (sinusoidal, learned), rotary, ALiBi, none.

Each is a module with three hooks the reference model calls; a hook an
encoding does not use is the identity. ``offset`` is the position of the first
of the T tokens (non-zero when decoding with a KV cache):

* ``embed(x, offset)``: add absolute positions to token embeddings x (B, T, d);
* ``rotate(q, k, offset)``: rotate queries/keys (B, H, T, Dh) (rotary);
* ``score_mod()``: a score bias for the attention backend (ALiBi), or None.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from lceval import registry
from lceval.errors import UserError


class PositionEncoding(nn.Module):
    name: ClassVar[str]
    absolute: ClassVar[bool] = False
    #: uses a score bias, so attention variants that cannot add one refuse it
    needs_score_mod: ClassVar[bool] = False

    def __init__(self, d_model: int, n_heads: int, max_length: int):
        super().__init__()
        self.d_model, self.n_heads, self.max_length = d_model, n_heads, max_length

    @property
    def max_supported_length(self) -> int | None:
        """Longest input this encoding can represent; None for unbounded."""
        return None

    def embed(self, x: Tensor, offset: int = 0) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        return q, k

    def score_mod(self):
        return None


class NoPosition(PositionEncoding):
    name = "none"


class Sinusoidal(PositionEncoding):
    """Fixed sin/cos absolute positions (Vaswani et al. 2017), added to embeddings.

    The table is scaled by ``amplitude`` so it is on the scale of the token
    embeddings (init std 0.02); at unit amplitude it swamps token identity and
    a tiny model stays at chance (measured: 2% after 1500 steps vs 100% after 800).
    """

    name = "sinusoidal"
    absolute = True
    amplitude = 0.03

    def embed(self, x, offset=0):
        T, d = x.shape[1], x.shape[2]
        pos = torch.arange(offset, offset + T, dtype=torch.float32, device=x.device)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, device=x.device, dtype=torch.float32) * (-math.log(10000.0) / d))
        pe = torch.zeros(T, d, device=x.device)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
        return x + self.amplitude * pe.to(x.dtype)


class Learned(PositionEncoding):
    """A trained table of ``max_length`` absolute position vectors."""

    name = "learned"
    absolute = True

    def __init__(self, d_model, n_heads, max_length):
        super().__init__(d_model, n_heads, max_length)
        self.table = nn.Embedding(max_length, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def max_supported_length(self):
        return self.max_length

    def embed(self, x, offset=0):
        end = offset + x.shape[1]
        if end > self.max_length:
            raise UnsupportedLength(f"learned positions cover {self.max_length} tokens, input has {end}")
        return x + self.table.weight[offset:end]


class Rotary(PositionEncoding):
    """Rotary embeddings (Su et al. 2021), half-split layout, base 10000."""

    name = "rotary"

    def angles(self, offset: int, T: int, dh: int, device, dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (T, dh // 2) of positions offset..offset+T-1.

        Sliced from one table of positions 0..n-1, kept between calls and doubled when a call reaches past it:
        row blocks of a long sequence and decoding steps reuse it, and a position gets the same cos and sin
        whichever call asks for it (a KV-cache step and a full forward rotate alike).
        """
        key = (dh, device, dtype)
        table = getattr(self, "_angles", None)
        have = table[1].shape[0] if table is not None and table[0] == key else 0
        if have < offset + T:
            n = max(offset + T, 2 * have)
            half = dh // 2
            inv = 1.0 / (10000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
            ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv  # (n, half)
            self._angles = table = (key, ang.cos().to(dtype), ang.sin().to(dtype))
        return table[1][offset:offset + T], table[2][offset:offset + T]

    def rotate(self, q, k, offset=0):
        T, dh = q.shape[2], q.shape[3]
        half = dh // 2
        cos, sin = self.angles(offset, T, dh, q.device, q.dtype)

        def rot(x):  # (B, H, T, dh)
            x = x.contiguous()  # q and k arrive as strided views of the projections: elementwise work is 4x slower
            x1, x2 = x[..., :half], x[..., half : 2 * half]
            out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
            return torch.cat([out, x[..., 2 * half :]], dim=-1) if dh % 2 else out

        return rot(q), rot(k)


class ALiBi(PositionEncoding):
    """Linear biases (Press et al. 2022): score -= slope_h * (i - j)."""

    name = "alibi"
    needs_score_mod = True

    def __init__(self, d_model, n_heads, max_length):
        super().__init__(d_model, n_heads, max_length)
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def score_mod(self):
        slopes = self.slopes[:, None, None]  # (H, 1, 1)

        def mod(scores, qi, kj):
            return scores - slopes.to(scores.dtype) * (qi - kj).abs().to(scores.dtype)

        return mod


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8/n), 2^(-16/n), ... (interpolated for non powers of two)."""
    p = 2 ** math.floor(math.log2(n_heads))
    base = [2 ** (-8 * (i + 1) / p) for i in range(p)]
    extra = [2 ** (-4 * (2 * i + 1) / p) for i in range(n_heads - p)]
    return torch.tensor(base + extra, dtype=torch.float32)


class UnsupportedLength(UserError):
    """The input is longer than the position encoding can represent."""


def build_position(name: str, d_model: int, n_heads: int, max_length: int) -> PositionEncoding:
    return registry.positions.get(name)(d_model, n_heads, max_length)
