"""Long documents of sentence pairs at an exact token length, with every word's token span.

Layouts (the depth of a sentence is its position in the source document):

* ``concatenated``: ``<src>`` every source sentence, then ``<tgt>`` every translation
  in the same order: the distance from a target word back to its source grows with
  the document;
* ``interleaved``: ``<src>`` s1 ``<tgt>`` t1 ``<src>`` s2 ``<tgt>`` t2 ...: the distance
  stays short (the control).

The document holds as many whole pairs as fit; leading ``~`` padding words (linked to
nothing) make the length exact. One pair is the *focus*, placed at the requested
depth; its gold links, mapped to token spans, are what a task scores.

The task (``task.py``) scores the focus pair through attention capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lceval.errors import UserError
from lceval.tasks.alignment.grammar import Pair, sentence
from lceval.tokenizer import TextTokenizer

SRC, TGT, PAD = "<src>", "<tgt>", "~"
LAYOUTS = ("concatenated", "interleaved")


@dataclass
class Document:
    ids: list[int]
    pairs: list[Pair]
    focus: int  # index of the focus pair
    src_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per pair, per source word: [start, end)
    tgt_spans: list[list[tuple[int, int]]] = field(default_factory=list)

    @property
    def depth(self) -> float:
        """Realized depth of the focus sentence in the source document (0 = first, 1 = last)."""
        return self.focus / max(1, len(self.pairs) - 1)

    def focus_links(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        """The focus pair's sure and possible links as (source token start, target token start)."""
        src, tgt, gold = self.src_spans[self.focus], self.tgt_spans[self.focus], self.pairs[self.focus].gold
        return ({(src[i][0], tgt[j][0]) for i, j in gold.sure}, {(src[i][0], tgt[j][0]) for i, j in gold.possible})


def _encode(tokenizer: TextTokenizer, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    ids, spans = [], []
    for w in words:
        piece = tokenizer.piece(w)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return ids, spans


def _pad_token(tokenizer: TextTokenizer) -> list[int]:
    """The one-token word that pads a document to its exact length."""
    pad = next((p for p in map(tokenizer.piece, [PAD, ".", ","]) if len(p) == 1), None)
    if pad is None:
        raise UserError(f"no single-token padding word ({PAD!r}, '.', ',') in the model's tokenizer")
    return pad


def build_document(rng: np.random.Generator, tokenizer: TextTokenizer, length: int, depth: float,
                   layout: str, pairs: list[Pair] | None = None) -> Document:
    """A document of exactly ``length`` tokens whose focus pair sits nearest ``depth``.

    Sentence pairs come from the grammar, or are drawn from ``pairs`` (the user's parallel text; their
    words are encoded as running text and mapped to tokens through the tokenizer's offsets).
    """
    if pairs is None:
        draw, encode = sentence, lambda words: _encode(tokenizer, words)
    else:
        def draw(rng):
            return pairs[int(rng.integers(len(pairs)))]

        def encode(words):
            return tokenizer.words(words)
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    prefix = tokenizer.prefix()
    src_mark, tgt_mark = tokenizer.piece(SRC), tokenizer.piece(TGT)
    pad = _pad_token(tokenizer)
    encoded: list[tuple[Pair, list[int], list, list[int], list]] = []
    per_pair = len(src_mark) + len(tgt_mark) if layout == "interleaved" else 0
    used = len(prefix) + (0 if layout == "interleaved" else len(src_mark) + len(tgt_mark))
    while True:
        pair = draw(rng)
        s_ids, s_spans = encode(pair.source)
        t_ids, t_spans = encode(pair.target)
        need = len(s_ids) + len(t_ids) + per_pair
        if used + need > length:
            break
        encoded.append((pair, s_ids, s_spans, t_ids, t_spans))
        used += need
    if not encoded:
        raise UserError(f"tasks.alignment.lengths: {length} tokens cannot hold one sentence pair; use longer lengths")
    focus = int(round(depth * (len(encoded) - 1)))
    ids = list(prefix) + pad * (length - used)
    src_spans: list = [None] * len(encoded)
    tgt_spans: list = [None] * len(encoded)

    def put(block: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        start = len(ids)
        ids.extend(block)
        return [(a + start, b + start) for a, b in spans]

    if layout == "interleaved":
        for k, (_, s_ids, s_sp, t_ids, t_sp) in enumerate(encoded):
            ids.extend(src_mark)
            src_spans[k] = put(s_ids, s_sp)
            ids.extend(tgt_mark)
            tgt_spans[k] = put(t_ids, t_sp)
    else:
        ids.extend(src_mark)
        for k, (_, s_ids, s_sp, _, _) in enumerate(encoded):
            src_spans[k] = put(s_ids, s_sp)
        ids.extend(tgt_mark)
        for k, (_, _, _, t_ids, t_sp) in enumerate(encoded):
            tgt_spans[k] = put(t_ids, t_sp)
    assert len(ids) == length
    return Document(ids, [e[0] for e in encoded], focus, src_spans, tgt_spans)


def vocabulary() -> list[str]:
    from lceval.tasks.alignment.grammar import source_vocabulary, target_vocabulary

    return sorted(set(source_vocabulary()) | set(target_vocabulary()) | {SRC, TGT, PAD})
