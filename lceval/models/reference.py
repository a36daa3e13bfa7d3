"""The built-in reference model: a small decoder-only transformer.

Short and readable on purpose (nanoGPT-like). Attention and position encoding
are pluggable: the position encoding is fixed when the model is trained, the
attention variant can be swapped at evaluation time (``model.set_attention(...)``).
Each block can start with a short causal depthwise convolution (a "token shift",
``conv_kernel``; 0 = pure attention). It makes associative recall learnable in a
few hundred steps on a CPU, but it hands each token its neighbours' content, so
studies of position encodings report models without it too (reports/zoo).
"""

from __future__ import annotations

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lceval.attention import Attention
from lceval.attention.cache import KVCache, LayerCache
from lceval.attention.core import by_layer, zero_heads
from lceval.position import PositionEncoding, build_position

EVAL_ROWS = 2048  # tokens (batch x positions) per row block when evaluating long sequences (Block._by_rows)


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

    def forward(self, x: Tensor, cache: LayerCache | None = None) -> Tensor:
        """With a layer cache, the last k - 1 inputs of earlier calls stand in for the left padding."""
        xt = x.transpose(1, 2)  # (B, d, T)
        if cache is None or cache.conv_tail is None:
            y = F.pad(xt, (self.kernel - 1, 0))  # (B, d, T + k - 1)
        else:
            y = torch.cat([cache.conv_tail, xt], dim=2)
        if cache is not None:
            cache.conv_tail = y[:, :, y.shape[2] - (self.kernel - 1):]
        return self.conv(y).transpose(1, 2)


class Routing:
    """What every attention layer of a model shares and the model sets: its position encoding (a module the
    model registers), its attention variant (``set_attention``) and the active capture, if any. Layers hold
    this, not the model."""

    def __init__(self, position: PositionEncoding, attention: Attention):
        self.position, self.attention, self.capture = position, attention, None
        self.ablate: dict[int, list[int]] = {}  # layer -> heads whose output is zeroed


class SelfAttention(nn.Module):
    def __init__(self, arch: Architecture, routing: Routing, layer: int):
        super().__init__()
        self.layer = layer  # which block this is (attention capture and the KV cache are per layer)
        self.h = arch.n_heads
        self.h_kv = arch.n_kv_heads or arch.n_heads
        self.dh = arch.d_model // arch.n_heads
        self.q = nn.Linear(arch.d_model, self.h * self.dh, bias=False)
        self.kv = nn.Linear(arch.d_model, 2 * self.h_kv * self.dh, bias=False)
        self.out = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.routing = routing

    def project(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, H, T, Dh), keys and values (B, H_kv, T, Dh) of normalized inputs x at positions offset..."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.h_kv, self.dh).permute(2, 0, 3, 1, 4)
        q, k = self.routing.position.rotate(q, k, offset)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache | None) -> Tensor:
        """The model's attention variant over projected queries, keys and values: (B, H, T, Dh)."""
        routing = self.routing
        mod = routing.position.score_mod()
        if cache is None:
            if routing.capture is not None:  # normalized weights of chosen rows, for alignment and probing
                routing.capture.record(self.layer, routing.attention, q, k, v, score_mod=mod)
            return routing.attention(q, k, v, causal=True, score_mod=mod)
        layer = cache.layers[self.layer]
        out = routing.attention.cached(layer, q, k, v, score_mod=mod)
        if routing.capture is not None:  # over every key so far: the cache's (softmax variants keep them)
            if layer.k is not None:
                routing.capture.record(self.layer, routing.attention, q, layer.k, layer.v, score_mod=mod)
            elif cache.length == 0:  # a recurrent state keeps no keys: the prompt's own call only
                routing.capture.record(self.layer, routing.attention, q, k, v, score_mod=mod)
        return out

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        y = self.attend(*self.project(x, 0 if cache is None else cache.length), cache)
        y = zero_heads(y, self.routing.ablate.get(self.layer))  # ablated heads give nothing to the projection
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, arch: Architecture, routing: Routing, layer: int):
        super().__init__()
        d = arch.d_model
        self.conv = ShortConv(d, arch.conv_kernel) if arch.conv_kernel else None
        self.ln0 = nn.LayerNorm(d) if self.conv else None
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(arch, routing, layer)
        self.mlp = nn.Sequential(nn.Linear(d, arch.mlp_ratio * d), nn.GELU(), nn.Linear(arch.mlp_ratio * d, d))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        step = max(1, EVAL_ROWS // x.shape[0])  # positions per row block
        if not torch.is_grad_enabled() and x.shape[1] > step:
            return self._by_rows(x, cache, step)
        if self.conv is not None:
            x = x + self.conv(self.ln0(x), None if cache is None else cache.layers[self.attn.layer])
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))

    def _by_rows(self, x: Tensor, cache: KVCache | None, step: int) -> Tensor:
        """Evaluation of long sequences: everything but the attention call runs ``step`` positions at a time.

        At 64k tokens the per-token work (norms, convolution, projections, rotary, MLP) makes tensors of 16-64 MB
        that do not stay in cache; row blocks keep them there. Each row's arithmetic is the one-shot forward's.
        """
        attn, (B, T, _) = self.attn, x.shape
        offset = 0 if cache is None else cache.length
        rows = [(t0, min(t0 + step, T)) for t0 in range(0, T, step)]
        q = x.new_empty(B, attn.h, T, attn.dh)
        k, v = x.new_empty(B, attn.h_kv, T, attn.dh), x.new_empty(B, attn.h_kv, T, attn.dh)
        if self.conv is not None:
            tail = LayerCache() if cache is None else cache.layers[attn.layer]  # carries the conv's left context
            x = x.clone()  # the block's input plus its convolution, row block by row block
        for t0, t1 in rows:
            if self.conv is not None:
                x[:, t0:t1] += self.conv(self.ln0(x[:, t0:t1]), tail)
            q[:, :, t0:t1], k[:, :, t0:t1], v[:, :, t0:t1] = attn.project(self.ln1(x[:, t0:t1]), offset + t0)
        y = zero_heads(attn.attend(q, k, v, cache), attn.routing.ablate.get(attn.layer))  # (B, H, T, Dh)
        out = torch.empty_like(x)
        for t0, t1 in rows:
            h = x[:, t0:t1] + attn.out(y[:, :, t0:t1].transpose(1, 2).reshape(B, t1 - t0, -1))
            out[:, t0:t1] = h + self.mlp(self.ln2(h))
        return out


class ReferenceTransformer(nn.Module):
    def __init__(self, arch: Architecture, attention: Attention):
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.d_model)
        self.position: PositionEncoding = build_position(arch.position, arch.d_model, arch.n_heads, arch.max_length)
        self.routing = Routing(self.position, attention)
        self.blocks = nn.ModuleList(Block(arch, self.routing, i) for i in range(arch.n_layers))
        self.ln_f = nn.LayerNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.apply(_init)

    def set_attention(self, attention: Attention) -> None:
        """Route every layer's attention through ``attention`` (the one way to swap a model's variant)."""
        self.routing.attention = attention

    def set_ablation(self, heads: list[tuple[int, int]]) -> None:
        """Zero these (layer, head) outputs from now on (none: the model as trained)."""
        self.routing.ablate = by_layer(heads)

    @property
    def attention(self) -> Attention:
        return self.routing.attention

    @property
    def capture(self):
        """An ``lceval.attention.capture.Capture`` while one is active (set by ``capturing``), else None."""
        return self.routing.capture

    @capture.setter
    def capture(self, value) -> None:
        self.routing.capture = value

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.blocks))

    def hidden(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final hidden states (B, T, d) for token ids (B, T).

        With a ``cache``, ``ids`` continue the sequence the cache holds, and the cache is extended.
        """
        offset = 0 if cache is None else cache.length
        x = self.position.embed(self.embed(ids), offset)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += ids.shape[1]
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
