"""Kernelized linear attention, chunked: O(n) memory, float32 state.

out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over visible j
(causal: j <= i + S - T; non-causal: every j). The scale does not apply
(feature maps are applied to q and k as they are). No score bias can be added,
so ALiBi pairings are refused at config time.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from lceval.attention.base import Attention, use_triton
from lceval.attention.core import causal_mask, check_shapes, grouped_scores, grouped_values, repeat_kv, row_index
from lceval.attention.features import FEATURE_MAPS

SHORT_CHUNKS = 8  # sequences of at most this many chunks run batched over sequences (training lengths)
SEGMENT_BYTES = 4 * 2**20  # the causal path's intra-chunk blocks per batched step (sized for the cache: 64 MiB ran slower)



def naive_linear_weights(q: Tensor, k: Tensor, feature_map: str, causal: bool = True, rows=None) -> Tensor:
    """The linear-attention oracle: the explicit normalized matrix phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')
    over visible keys, (B, H, r, S) for query rows ``rows`` (all by default), in float32 (float64 stays)."""
    T, S = q.shape[2], k.shape[2]
    phi = FEATURE_MAPS[feature_map]
    idx = row_index(rows, T, q.device)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    a = grouped_scores(phi(q[:, :, idx].to(dt)), phi(k.to(dt)))  # (B, H, r, S); phi per key head, not per copy
    if causal:
        a = a * causal_mask((idx + (S - T))[:, None], torch.arange(S, device=q.device)[None, :])
    den = a.sum(-1, keepdim=True)
    return a / torch.where(den > 0, den, torch.ones_like(den))


def naive_linear_attention(q: Tensor, k: Tensor, v: Tensor, feature_map: str = "elu1", causal: bool = True) -> Tensor:
    """The oracle's output: ``naive_linear_weights`` times the values (the kernels' reference)."""
    w = naive_linear_weights(q, k, feature_map, causal)
    return (w @ repeat_kv(v, q.shape[1]).to(w.dtype)).to(q.dtype)


class LinearParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    feature_map: Literal["elu1", "relu", "softplus"] = "elu1"
    chunk: pydantic.PositiveInt = 128


class LinearAttention(Attention):
    name = "linear"
    Params = LinearParams
    supports_score_mod = False
    recurrent = True

    def phi(self, x: Tensor) -> Tensor:
        """The feature map in float32 (float64 inputs stay float64)."""
        return FEATURE_MAPS[self.params.feature_map](x if x.dtype == torch.float64 else x.float())

    def weights(self, q, k, v, causal=True, rows=None, score_mod=None, scale=None) -> Tensor:
        """The explicit normalized matrix phi(q_i).phi(k_j) / sum_j' ... for the requested rows."""
        self._refuse(score_mod)
        check_shapes(q, k, v)
        return naive_linear_weights(q, k, self.params.feature_map, causal, rows).to(q.dtype)

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None) -> Tensor:
        self._refuse(score_mod)
        check_shapes(q, k, v)
        c = self.params.chunk
        if 16 <= c <= 256 and not c & (c - 1) and use_triton(q, k, v, score_mod):  # the kernel's chunk: a power of 2
            from lceval.kernels import linear_attention

            self.last_impl = "triton"
            return linear_attention(q, k, v, feature_map=self.params.feature_map, causal=causal, chunk=c)
        B, H, T, D = q.shape
        S = k.shape[2]
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # state precision
        if causal and 0 < S - T and 2 * T <= D:
            return self._few_queries(q, k, v)
        kk, vv = repeat_kv(k, H), repeat_kv(v, H).to(acc)
        self.last_impl = "torch.chunked"  # the chunk loop (T != S, e.g. decoding with a cache)
        if not causal:
            fk = self.phi(kk)  # (B, H, S, Dphi)
            state = fk.transpose(-1, -2) @ vv  # (B, H, Dphi, D)
            z = fk.sum(2)  # (B, H, Dphi)
            return self._ratio(self.phi(q) @ state, self.phi(q) @ z[..., None]).to(q.dtype)
        offset, c = S - T, self.params.chunk
        if offset == 0:
            return self._causal_batched(q, kk, vv, acc).to(q.dtype)
        state = q.new_zeros((B, H, q.shape[-1], D), dtype=acc)  # sum of phi(k)^T v over absorbed keys
        z = q.new_zeros((B, H, q.shape[-1]), dtype=acc)
        absorbed = 0  # keys [0, absorbed) are folded into the state
        outs = []
        for q0 in range(0, T, c):
            q1 = min(q0 + c, T)
            fq = self.phi(q[:, :, q0:q1])  # (B, H, c, Dphi)
            first = max(0, min(S, q0 + offset))  # keys every query of this chunk sees
            if first > absorbed:
                fk = self.phi(kk[:, :, absorbed:first])
                state = state + fk.transpose(-1, -2) @ vv[:, :, absorbed:first]
                z = z + fk.sum(2)
                absorbed = first
            num = fq @ state  # (B, H, c, D)
            den = fq @ z[..., None]  # (B, H, c, 1)
            last = max(0, min(S, q1 + offset))  # keys [absorbed, last) seen by part of the chunk
            if last > absorbed:
                a = fq @ self.phi(kk[:, :, absorbed:last]).transpose(-1, -2)  # (B, H, c, c')
                qi = torch.arange(q0, q1, device=q.device)[:, None] + offset
                a = a * (torch.arange(absorbed, last, device=q.device)[None, :] <= qi)
                num = num + a @ vv[:, :, absorbed:last]
                den = den + a.sum(-1, keepdim=True)
            outs.append(self._ratio(num, den))
        return torch.cat(outs, dim=2).to(q.dtype)

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A few queries continuing S - T cached keys (a decoding step over a model's own key cache, as Hugging
        Face models keep it): the explicit normalized rows over every key (``naive_linear_weights``, O(T x S x D))
        times the values, instead of folding all S keys into a state first, O(S x D x D), at every step (cheaper
        while 2T <= D). Key and value heads are read per group (GQA), never repeated."""
        w = naive_linear_weights(q, k, self.params.feature_map, causal=True)  # (B, H, T, S), float32 or float64
        self.last_impl = "torch.rows"
        return grouped_values(w, v.to(w.dtype)).to(q.dtype)

    def _causal_batched(self, q: Tensor, kk: Tensor, vv: Tensor, acc: torch.dtype) -> Tensor:
        """Causal self-attention (T == S) with every chunk of a segment in one batched matmul: the state
        before each chunk is a running sum over chunks (the same additions, in the same order, as the
        chunk loop below); within a chunk, the explicit lower-triangular phi(q).phi(k) block. Segments
        of chunks keep the intra-chunk blocks under ``SEGMENT_BYTES``; short sequences (at most ``SHORT_CHUNKS``
        chunks, as in training) or a batch that fits in one segment run in one batched step over every
        sequence, the states from cumsum (a per-sequence loop under autograd costs 10x in training)."""
        B, H, T, D = q.shape
        c = min(self.params.chunk, T)  # a sequence shorter than a chunk is one chunk, unpadded
        fq, fk = self.phi(q), self.phi(kk)  # (B, H, T, Dphi)
        P = fq.shape[-1]
        n = -(-T // c)
        pad = n * c - T  # padded keys come after every real query, so the causal mask hides them
        fq, fk, vv = ((F.pad(x, (0, 0, 0, pad)) if pad else x.contiguous()).view(B, H, n, c, x.shape[-1])
                      for x in (fq, fk, vv))
        m = max(1, SEGMENT_BYTES // (c * (c + P + D) * fq.element_size()))  # chunks per segment
        if n <= SHORT_CHUNKS or B * H * n <= m:  # short sequences (training): all sequences and chunks at once
            kv = fk.transpose(-1, -2) @ vv  # (B, H, n, Dphi, D): each chunk's own sum
            ks = fk.sum(3)  # (B, H, n, Dphi)
            states = F.pad(kv.cumsum(2)[:, :, :-1], (0, 0, 0, 0, 1, 0))  # the sum before each chunk
            zs = F.pad(ks.cumsum(2)[:, :, :-1], (0, 0, 1, 0))
            a = (fq @ fk.transpose(-1, -2)).tril_()  # (B, H, n, c, c)
            num = fq @ states + a @ vv
            den = fq @ zs[..., None] + a.sum(-1, keepdim=True)
            self.last_impl = "torch.batched"
            return self._ratio(num, den).view(B, H, n * c, D)[:, :, :T]
        self.last_impl = "torch.segments"
        out = torch.empty((B, H, n, c, D), dtype=fq.dtype, device=q.device)
        for b in range(B):
            for h in range(H):  # one sequence at a time: its chunks are contiguous, its segments need no copies
                state = q.new_zeros((P, D), dtype=acc)
                z = q.new_zeros((P,), dtype=acc)
                for s0 in range(0, n, m):
                    fqs, fks, vs = fq[b, h, s0:s0 + m], fk[b, h, s0:s0 + m], vv[b, h, s0:s0 + m]  # (m, c, .)
                    kv = fks.transpose(-1, -2) @ vs  # (m, Dphi, D): each chunk's own sum
                    ks = fks.sum(1)  # (m, Dphi)
                    states, zs = [], []
                    for j in range(fqs.shape[0]):  # the state before each chunk
                        states.append(state)
                        zs.append(z)
                        state, z = state + kv[j], z + ks[j]
                    a = (fqs @ fks.transpose(-1, -2)).tril_()  # (m, c, c): keys up to the query
                    num = fqs @ torch.stack(states) + a @ vs
                    den = fqs @ torch.stack(zs)[..., None] + a.sum(-1, keepdim=True)
                    out[b, h, s0:s0 + m] = self._ratio(num, den)
        return out.view(B, H, n * c, D)[:, :, :T]

    def cached(self, cache, q, k, v, score_mod=None, scale=None) -> Tensor:
        """Decode from the recurrent state: (sum phi(k)^T v, sum phi(k)) over the tokens so far.

        The first call (the prompt) runs the chunked path and folds every key into the
        state; later calls read the state, then absorb their own keys, in chunks.
        """
        self._refuse(score_mod)
        check_shapes(q, k, v)
        H = q.shape[1]
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        fk = self.phi(repeat_kv(k, H))  # (B, H, T, Dphi)
        vv = repeat_kv(v, H).to(acc)  # (B, H, T, D)
        if cache.state is None:
            out = self(q, k, v, causal=True)
            cache.state = (fk.transpose(-1, -2).to(acc) @ vv, fk.sum(2).to(acc))  # (B,H,Dphi,D), (B,H,Dphi)
            return out
        state, z = cache.state
        outs, c = [], self.params.chunk
        for t0 in range(0, q.shape[2], c):
            t1 = min(t0 + c, q.shape[2])
            fq, fkc, vc = self.phi(q[:, :, t0:t1]).to(acc), fk[:, :, t0:t1].to(acc), vv[:, :, t0:t1]
            a = torch.tril(fq @ fkc.transpose(-1, -2))  # (B, H, c, c): new keys visible causally
            num = fq @ state + a @ vc
            den = fq @ z[..., None] + a.sum(-1, keepdim=True)
            outs.append(self._ratio(num, den))
            state, z = state + fkc.transpose(-1, -2) @ vc, z + fkc.sum(2)
        cache.state = (state, z)
        self.last_impl = "torch.recurrent"
        return torch.cat(outs, dim=2).to(q.dtype)

    @staticmethod
    def _ratio(num: Tensor, den: Tensor) -> Tensor:
        return num / torch.where(den > 0, den, torch.ones_like(den))

    def _refuse(self, score_mod) -> None:
        if score_mod is not None:
            raise ValueError("linear attention cannot apply a score bias (e.g. ALiBi)")
