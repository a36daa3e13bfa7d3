"""Haystack text: RULER-style repeated filler and generated essay-like sentences.

Everything is generated from small word lists shipped here, so nothing is
downloaded and a word-level tokenizer can cover the whole vocabulary.
"""

from __future__ import annotations

import bisect

import numpy as np

from lceval.tokenizer import TextTokenizer

# The repeated filler RULER uses for its needle tasks (a fact about that benchmark).
REPEAT_SENTENCES = [
    "The grass is green .",
    "The sky is blue .",
    "The sun is yellow .",
    "Here we go .",
    "There and back again .",
]

_DET = ["the", "a", "every", "one", "that", "this"]
_ADJ = ["quiet", "old", "bright", "small", "distant", "careful", "early", "narrow", "warm", "simple", "heavy", "gentle"]
_NOUN = ["village", "teacher", "garden", "engine", "letter", "window", "market", "painter", "harbor", "student",
         "bridge", "forest", "kitchen", "lantern", "machine", "farmer", "library", "valley", "doctor", "station"]
_VERB = ["visits", "describes", "follows", "builds", "watches", "remembers", "carries", "repairs", "finds", "opens"]
_PREP = ["near", "behind", "beside", "under", "beyond", "across"]
_ADV = ["slowly", "often", "again", "later", "quickly", "rarely"]

ESSAY_WORDS = sorted(set(_DET + _ADJ + _NOUN + _VERB + _PREP + _ADV + ["The", "A", "Every", "One", "That", "This"]))
REPEAT_WORDS = sorted({w for s in REPEAT_SENTENCES for w in s.split()})


def essay_sentence(rng: np.random.Generator) -> str:
    """One essay-like sentence from a tiny grammar."""
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    words = [pick(_DET).capitalize(), pick(_ADJ), pick(_NOUN), pick(_VERB), pick(_DET), pick(_NOUN)]
    if rng.random() < 0.5:
        words += [pick(_PREP), pick(_DET), pick(_NOUN)]
    if rng.random() < 0.3:
        words.append(pick(_ADV))
    return " ".join(words) + " ."


class SentencePool:
    """A fixed pool of haystack sentences, each tokenized once."""

    def __init__(self, kind: str, tokenizer: TextTokenizer, seed: int, size: int = 256):
        rng = np.random.default_rng(seed)
        texts: list[str] = []
        for i in range(size):
            use_repeat = kind == "repeat" or (kind == "mixed" and rng.random() < 0.5)
            texts.append(REPEAT_SENTENCES[i % len(REPEAT_SENTENCES)] if use_repeat else essay_sentence(rng))
        self.kind = kind
        self.texts = texts
        self.ids = [tokenizer.piece(t) for t in texts]
        self.max_len = max(len(x) for x in self.ids)
        self.last_cut = False
        self._plans: dict[int, list[int] | None] = {}

    def fill(self, rng: np.random.Generator, budget: int) -> tuple[list[int], list[int]]:
        """Exactly ``budget`` tokens of haystack, whole sentences, and the sentence-start offsets in it.

        Sentences follow the pool order from a random start (so repeated filler
        keeps its cycle). The last few are chosen by length so the total is exact;
        only when no combination of the pool's sentence lengths fits is the last
        sentence cut (``self.last_cut`` says so).
        """
        out: list[int] = []
        starts: list[int] = []
        i = int(rng.integers(len(self.ids)))
        tail = 3 * self.max_len
        while budget - len(out) > tail:
            starts.append(len(out))
            out.extend(self.ids[i % len(self.ids)])
            i += 1
        plan = self._lengths_summing_to(budget - len(out))
        self.last_cut = plan is None
        if plan is None:  # no whole-sentence fill: cut the last one (as before)
            while len(out) < budget:
                starts.append(len(out))
                out.extend(self.ids[i % len(self.ids)])
                i += 1
            return out[:budget], starts
        for n in plan:  # the next sentences of the right lengths, in pool order
            j = next(j for j in range(i, i + len(self.ids)) if len(self.ids[j % len(self.ids)]) == n)
            starts.append(len(out))
            out.extend(self.ids[j % len(self.ids)])
            i = j + 1
        return out, starts

    def _lengths_summing_to(self, total: int) -> list[int] | None:
        """Sentence lengths (from the pool's) adding up to ``total``, fewest first; None if impossible."""
        if total not in self._plans:
            lengths = sorted({len(x) for x in self.ids})
            best: list[list[int] | None] = [[]] + [None] * total
            for t in range(1, total + 1):
                options = [best[t - n] + [n] for n in lengths if n <= t and best[t - n] is not None]
                best[t] = min(options, key=len) if options else None
            self._plans[total] = best[total]
        return self._plans[total]


def pool_for(task, kind: str, tokenizer: TextTokenizer) -> SentencePool:
    """The task's sentence pool of ``kind`` for ``tokenizer``, built once per task instance."""
    pools = task.__dict__.setdefault("_sentence_pools", {})
    key = (kind, tokenizer.fingerprint())
    if key not in pools:
        pools[key] = SentencePool(kind, tokenizer, seed=task.seed)
    return pools[key]


def nearest(boundaries: list[int], target: float) -> int:
    """The boundary closest to ``target`` (boundaries sorted ascending)."""
    i = bisect.bisect_left(boundaries, target)
    candidates = boundaries[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda b: (abs(b - target), b))


def assemble(prefix: list[int], hay: list[int], starts: list[int], pieces: list[tuple[float, list[int]]],
             suffix: list[int]) -> tuple[list[int], list[int], list[int]]:
    """prefix + haystack with each piece inserted at the sentence boundary nearest its fraction + suffix.

    Returns the ids, each piece's token offset, and each piece's haystack cut (haystack
    tokens before it; cut / len(hay) is its realized depth), in the order given.
    """
    budget = len(hay)
    bounds = starts + [budget]
    cuts = [nearest(bounds, f * budget) for f, _ in pieces]
    order = sorted(range(len(pieces)), key=lambda i: (cuts[i], i))
    ids, prev, offsets = list(prefix), 0, [0] * len(pieces)
    for i in order:
        ids += hay[prev : cuts[i]]
        offsets[i] = len(ids)
        ids += pieces[i][1]
        prev = cuts[i]
    return ids + hay[prev:] + suffix, offsets, cuts


def find(tokens: list[int], piece: list[int]) -> int | None:
    """The start of the last occurrence of ``piece`` in ``tokens`` (None if absent)."""
    n = len(piece)
    for i in range(len(tokens) - n, -1, -1):
        if n and tokens[i : i + n] == piece:
            return i
    return None


def evidence(offsets: list[int], pieces: list[list[int]], values: list[list[int]] | None = None) -> dict:
    """A sample's evidence spans (``Sample.meta["_evidence"]``, read by ``lceval.diagnosis``): ``needle``, each
    needle's whole tokens at its offset; ``value``, the tokens of the value inside each needle (where the value's
    piece occurs in the needle's tokens; the needle is listed without a value span where it does not)."""
    needle = [[o, o + len(p)] for o, p in zip(offsets, pieces, strict=True)]
    value = []
    for o, p, v in zip(offsets, pieces, values or [[]] * len(pieces), strict=True):
        at = find(p, v)
        if at is not None:
            value.append([o + at, o + at + len(v)])
    return {"needle": needle, "value": value}
