"""Why a needle was missed: attention on the evidence, per layer and head, read while the answer is produced.

A task that knows where its evidence lies puts the spans on each sample
(``Sample.meta["_evidence"]``, token offsets in the prompt): ``needle``, the
whole needle sentences the question asks about, and ``value``, the tokens of
the values the answer must copy. While a sample is scored, an
``EvidenceCapture`` watches every attention layer:

* at the position that predicts the first answer token (the prompt's last),
  the attention mass each head puts on the needle spans, an (L x H) array,
  and whether a head's top-weighted key lies in them;
* at every position that produces an answer token (each decoding step, or
  each answer position of a teacher-forced pass), each head's top-weighted
  key: a head *copies* a value token when its top key is that token, in a
  ``value`` span, and the model emits it (Wu et al. 2024's retrieval score).

Only the reduced numbers are kept: O(rows x S) memory while a layer runs,
O(L x H) per sample after. A row then gets a ``diagnosis``:

* ``found``: the answer is correct;
* ``out_of_reach``: the variant's mask hides every needle token from the
  predicting position (decided from the mask, not the weights);
* ``attended_but_wrong``: some head puts at least ``threshold`` of its mass on
  the needle, or holds its top key there, yet the answer is wrong;
* ``not_attended``: no head reaches the needle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lceval.attention.capture import Capture
from lceval.rows import DIAGNOSES  # noqa: F401  (the values diagnose() returns)

Spans = Sequence[Sequence[int]]  # [[start, end), ...] token offsets in the prompt
STRIP = 96  # bins of the attention strip the report draws per sample
CONTEXT = 24  # tokens shown on each side of the needle in the report


def pooled(row: Tensor, bins: int) -> list[float]:
    """A weight row over S keys, max-pooled to ``bins`` bins (each bin: its strongest key), 3 decimals."""
    S = row.shape[0]
    edges = [k * S // bins for k in range(bins + 1)]
    return [round(float(row[a:max(b, a + 1)].max()), 3) if a < S else 0.0 for a, b in zip(edges[:-1], edges[1:], strict=True)]


def needle_context(tokenizer, ids: list[int], needle: Spans) -> dict:
    """The text around the first needle (``CONTEXT`` tokens each side) and the prompt's end (the question), as
    the report shows a sample."""
    if not needle:
        return {}
    a, b = needle[0]
    return {"before": tokenizer.decode(ids[max(0, a - CONTEXT):a]), "needle": tokenizer.decode(ids[a:b]),
            "after": tokenizer.decode(ids[b:b + CONTEXT]), "question": tokenizer.decode(ids[-2 * CONTEXT:])}


def span_mask(spans_per_sample: Sequence[Spans], length: int, device) -> Tensor:
    """(B, length) bool: True on each sample's span tokens."""
    out = torch.zeros(len(spans_per_sample), length, dtype=torch.bool, device=device)
    for i, spans in enumerate(spans_per_sample):
        for a, b in spans:
            out[i, a:b] = True
    return out


class EvidenceCapture(Capture):
    """Per layer: the (B, H) mass on the needle at the first predicting row, and each call's top keys.

    ``first_rows``: the rows of the first call (the prompt's pass) that produce answer tokens, the first of
    them predicting the first answer token; every later call (a decoding step) contributes its last row.
    """

    def __init__(self, needle: Tensor, first_rows: list[int]):
        super().__init__(first_rows)
        self.needle = needle  # (B, T) bool over prompt positions
        self.first_rows = first_rows
        self.mass: dict[int, Tensor] = {}  # layer -> (B, H)
        self.top_first: dict[int, Tensor] = {}  # layer -> (B, H): top key at the first predicting row
        self.tops: dict[int, list[Tensor]] = {}  # layer -> per call (B, H, R) top keys
        # per sample: the pooled row of the head with the most needle mass so far, and that mass
        self.strips: list[list[float] | None] = [None] * needle.shape[0]
        self._strip_mass = torch.full((needle.shape[0],), -1.0)

    def shift_rows(self, offset: int) -> None:
        super().shift_rows(offset)
        self.first_rows = [r - offset for r in self.first_rows]

    @torch.no_grad()
    def record(self, layer: int, attention, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
               score_mod=None, scale=None) -> Tensor | None:
        first = layer not in self.mass
        rows = self.first_rows if first else [q.shape[2] - 1]
        w = attention.weights(q, k, v, causal=causal, rows=rows, score_mod=score_mod, scale=scale).float()
        if first:  # (B, H, R, S): the needle's share of the first predicting row
            S = w.shape[-1]
            needle = torch.nn.functional.pad(self.needle, (0, max(0, S - self.needle.shape[1])))[:, :S]
            mass = self.mass[layer] = (w[:, :, 0] * needle[:, None]).sum(-1)
            self.top_first[layer] = w[:, :, 0].argmax(-1)
            self._keep_strips(w[:, :, 0], mass)
        self.tops.setdefault(layer, []).append(w.argmax(-1))
        return w if len(rows) == q.shape[2] == 1 else None  # a decoding step: the weights of its only query

    def _keep_strips(self, rows: Tensor, mass: Tensor) -> None:
        """For each sample, the best head so far (by needle mass): its row over the keys, max-pooled to STRIP
        bins (the report draws it as the attention strip)."""
        best = mass.max(-1)  # values (B,), heads (B,)
        for b in torch.nonzero(best.values > self._strip_mass).flatten().tolist():
            self._strip_mass[b] = best.values[b]
            self.strips[b] = pooled(rows[b, best.indices[b]], STRIP)

    def recorded_layers(self) -> list[int]:
        return sorted(self.mass)

    def sample_stats(self, i: int, prompt: list[int], tokens: list[int], needle: Spans, values: Spans,
                     positions_per_call: int) -> dict:
        """Sample ``i``'s numbers: mass (L x H), whether a top key is in the needle, the best head, and the heads
        that copied value tokens. ``tokens``: the answer tokens the model produced, in order; answer token j
        came from call j // positions_per_call, row j % positions_per_call (teacher forcing: one call)."""
        layers = self.recorded_layers()
        mass = torch.stack([self.mass[layer][i] for layer in layers])  # (L, H)
        in_needle = set()
        for a, b in needle:
            in_needle.update(range(a, b))
        top_hit = any(int(self.top_first[layer][i, h]) in in_needle for layer in layers
                      for h in range(mass.shape[1]))
        best = int(mass.argmax())
        value_pos = {p for a, b in values for p in range(a, b)}
        copied: dict[tuple[int, int], set[int]] = {}
        for j, tok in enumerate(tokens):
            call, row = divmod(j, positions_per_call)
            for li, layer in enumerate(layers):
                calls = self.tops[layer]
                if call >= len(calls) or row >= calls[call].shape[-1]:
                    continue
                top = calls[call][i, :, row]  # (H,)
                for h in range(top.shape[0]):
                    p = int(top[h])
                    if p in value_pos and prompt[p] == tok:
                        copied.setdefault((li, h), set()).add(p)
        S = len(prompt)
        strip = {"strip": self.strips[i], "strip_needle": [[a * STRIP // S, max(a * STRIP // S + 1, -(-b * STRIP // S))]
                                                           for a, b in needle]} if self.strips[i] is not None else {}
        return {"evidence_mass": [[round(float(x), 4) for x in row] for row in mass.tolist()], **strip,
                "top_key_in_needle": bool(top_hit),
                "best_head": [best // mass.shape[1], best % mass.shape[1]], "best_mass": round(float(mass.max()), 4),
                "copy_heads": sorted([li, h, len(ps)] for (li, h), ps in copied.items()),
                "value_tokens": len(value_pos)}


def out_of_reach(attention, length: int, needle: Spans) -> bool:
    """Whether the variant's mask hides every needle token from the position predicting the first answer
    token (the prompt's last, ``length - 1``)."""
    positions = [p for a, b in needle for p in range(a, b)]
    if not positions:
        return False
    mask = attention.mask(True)
    if mask is None:
        return False
    qi = torch.tensor([[length - 1]])
    kj = torch.tensor([positions])
    return not bool(mask(qi, kj).any())


def diagnose(correct: bool, stats: dict | None, reach_lost: bool, threshold: float) -> str | None:
    """found, out_of_reach, attended_but_wrong or not_attended (None: no evidence was captured)."""
    if correct:
        return "found"
    if reach_lost:
        return "out_of_reach"
    if stats is None:
        return None
    attended = stats["best_mass"] >= threshold or stats["top_key_in_needle"]
    return "attended_but_wrong" if attended else "not_attended"
