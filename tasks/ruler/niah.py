"""RULER-style needle in a haystack with RULER's knobs, and its eight presets.

Knobs: the haystack (``noise``: repeated filler; ``essay``: generated essay-like
sentences; ``needle``: the haystack is made of distractor needles with other
keys), key and value types (words, numbers, uuid-like strings), how many keys
are written (``num_keys``; the others are distractors), values per key
(``num_values``) and keys queried (``num_queries``). The answer is every value
of every queried key, scored by ``string_match_all`` (order-free).

The first queried needle goes to the requested depth; the other needles (more
values, more queries, distractor keys) go to sentence boundaries drawn per
sample. Recorded: depth (requested), realized_depth, needle_offsets (every
queried needle), distance (question to the farthest queried needle).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic

from lceval.errors import UserError
from lceval.task import Length, Sample, Samples, Task, TrainingExample
from lceval.tasks.haystack import ESSAY_WORDS, REPEAT_WORDS, SentencePool, assemble, evidence, pool_for
from lceval.tasks.niah import KEYS
from lceval.tasks.ruler.common import (
    PromptConfig,
    Wording,
    fill,
    frame,
    numbers,
    preset,
    pseudo_words,
    uuids,
    wording,
    wording_words,
)
from lceval.tokenizer import TextTokenizer

Kind = Literal["words", "numbers", "uuids"]
NEEDLE = "One of the special magic {noun} for {key} is {value} ."
QUESTION = ("Question : what are all the special magic {noun} for {keys} in the text ? "
            "Answer : the special magic {noun} for {keys} are")
NOUNS = {"words": "words", "numbers": "numbers", "uuids": "uuids"}
WORDINGS = {
    "words": Wording("", QUESTION, ""),
    "natural": Wording("Some special magic {noun} are hidden in the text below. Memorize them: you will be asked "
                       "about them afterwards.",
                       "What are all the special magic {noun} for {query} mentioned in the text above?",
                       "The special magic {noun} for {query} mentioned in the text above are"),
}
TEMPLATE_WORDS = sorted({w for t in (NEEDLE, QUESTION) for w in t.split() if "{" not in w} | set(NOUNS.values())
                        | {"and"})


class RulerNiahConfig(PromptConfig):
    lengths: list[Length] = pydantic.Field(default=[256, 512, 1024], min_length=1)
    depths: list[pydantic.confloat(ge=0.0, le=1.0)] = pydantic.Field(default=[0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    samples: Samples = 10
    haystack: Literal["noise", "essay", "needle"] = "essay"
    shared_haystack: bool = pydantic.Field(
        False, description="every sample of a length reads the same haystack text (as RULER and the original needle "
                           "test do) instead of its own; prompts of one length then share their text up to the "
                           "first needle, and run.prefix_reuse computes that prefix once")
    key_type: Kind = "words"
    value_type: Kind = "numbers"
    num_keys: pydantic.PositiveInt = pydantic.Field(1, description="keys written in the text (the queried ones and distractors)")
    num_values: pydantic.PositiveInt = pydantic.Field(1, description="values per queried key")
    num_queries: pydantic.PositiveInt = pydantic.Field(1, description="keys asked about")
    pool: int = pydantic.Field(128, ge=16, le=4096, description="distinct values of each kind")
    train_max_queries: pydantic.PositiveInt = pydantic.Field(2, description="training curriculum: queries 1..this")

    @pydantic.model_validator(mode="after")
    def _counts(self):
        if self.num_queries > max(self.num_keys, 1) and self.haystack != "needle":
            raise ValueError(f"num_queries {self.num_queries} > num_keys {self.num_keys}: raise num_keys")
        return self


class RulerNiah(Task):
    """Needle in a haystack with RULER's knobs (several keys, values and queries)."""

    name = "ruler_niah"
    version = "2"
    Config = RulerNiahConfig
    config: RulerNiahConfig
    metric = "string_match_all"
    max_new_tokens = 128  # RULER's budget for niah
    group_by = ("depth",)
    distance_key = "distance"

    def shares_prefix(self) -> bool:
        return self.config.shared_haystack and self.config.haystack != "needle"

    # -- vocabulary --------------------------------------------------------------------
    def _values(self, kind: str, seed: int = 0) -> list[str]:
        """The pool of one kind; keys (seed 1) and values (seed 0) never share a uuid or number."""
        n = self.config.pool
        if kind == "words":
            return pseudo_words(n, seed=23)
        return numbers(n, seed=11 + seed * 100) if kind == "numbers" else uuids(n, seed=17 + seed * 100)

    def _keys(self) -> list[str]:
        return KEYS if self.config.key_type == "words" else self._values(self.config.key_type, seed=1)

    def vocabulary(self) -> list[str]:
        words = set(TEMPLATE_WORDS) | set(ESSAY_WORDS) | set(REPEAT_WORDS) | {".", "?", ":"}
        for kind, seed in ((self.config.key_type, 1), (self.config.value_type, 0)):
            words |= set(self._values(kind, seed))
        words |= set(KEYS) | wording_words(self.config, WORDINGS)
        return sorted(words)

    def _pool(self, tokenizer: TextTokenizer) -> SentencePool:
        return pool_for(self, "repeat" if self.config.haystack == "noise" else "essay", tokenizer)

    # -- one prompt --------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, n_queries: int):
        """Queried keys with their values, and distractor keys with theirs."""
        c = self.config
        keys, values = self._keys(), self._values(c.value_type)
        n_keys = max(c.num_keys, n_queries)
        picked = [keys[i] for i in rng.choice(len(keys), size=n_keys, replace=False)]
        vals = [values[i] for i in rng.choice(len(values), size=n_keys * c.num_values, replace=False)]
        table = {k: vals[i * c.num_values : (i + 1) * c.num_values] for i, k in enumerate(picked)}
        return picked[:n_queries], table

    def _frame(self, tokenizer, queried):
        """Ids before the haystack and after it (question, chat tail, answer prefix)."""
        keys = " and ".join(queried)
        fields = {"noun": NOUNS[self.config.value_type], "keys": keys, "query": keys}
        return frame(tokenizer, wording(self.config, tokenizer, WORDINGS, fields, self.name))

    def _needle(self, tokenizer, key, value):
        return tokenizer.piece(NEEDLE.format(noun=NOUNS[self.config.value_type], key=key, value=value))

    def _build(self, rng, tokenizer, length, depth, n_queries):
        """Prompt ids, references and metadata for one sample of ``length`` tokens."""
        queried, table = self._draw(rng, n_queries)
        needles = [(k, v) for k in queried for v in table[k]]
        distractors = [(k, v) for k, vs in table.items() if k not in queried for v in vs]
        prefix, question = self._frame(tokenizer, queried)
        pieces = [self._needle(tokenizer, k, v) for k, v in needles]
        extra = [self._needle(tokenizer, k, v) for k, v in distractors]
        fixed = len(prefix) + sum(map(len, pieces)) + sum(map(len, extra)) + len(question)
        budget = length - fixed
        if self.config.haystack == "needle":  # the haystack itself: distractor needles with other keys
            hay, starts = self._needle_haystack(rng, tokenizer, budget, set(table), length)
        else:  # a shared haystack starts where every sample of this length starts
            hay_rng = self.rng(length, "haystack") if self.config.shared_haystack else rng
            hay, starts = fill(self._pool(tokenizer), hay_rng, budget, self.name, length)
        fracs = [depth] + list(rng.random(len(pieces) - 1 + len(extra)))
        ids, offsets, cuts = assemble(prefix, hay, starts, list(zip(fracs, pieces + extra, strict=True)), question)
        q_offsets = offsets[: len(pieces)]
        refs = [v for _, v in needles]
        meta = {"depth": float(depth), "realized_depth": round(cuts[0] / max(1, budget), 4),
                "needle_offsets": q_offsets, "distance": len(ids) - min(q_offsets), "queries": len(queried),
                "values_per_key": self.config.num_values, "_queried": queried,
                "_evidence": evidence(q_offsets, pieces, [tokenizer.piece(v) for _, v in needles])}
        return ids, refs, meta

    def _needle_haystack(self, rng, tokenizer, budget, used: set[str], length):
        """Distractor needles (keys not asked about), whole ones, then noise filler to the exact length."""
        if budget < 0:
            fill(self._pool(tokenizer), rng, budget, self.name, length)  # raises the length error
        keys = [k for k in self._keys() if k not in used]
        values = self._values(self.config.value_type)
        out, starts = [], []
        while True:
            piece = self._needle(tokenizer, keys[rng.integers(len(keys))], values[rng.integers(len(values))])
            if len(out) + len(piece) > budget:
                break
            starts.append(len(out))
            out += piece
        rest, rest_starts = self._pool(tokenizer).fill(rng, budget - len(out)) if budget > len(out) else ([], [])
        return out + rest, starts + [len(out) + s for s in rest_starts]

    def cell_samples(self, cell, tokenizer, n):
        length, depth = cell["context_length"], cell["depth"]
        out = []
        for i in range(n):
            rng = self.rng(length, float(depth), i)
            ids, refs, meta = self._build(rng, tokenizer, length, depth, self.config.num_queries)
            meta.pop("_queried")
            self.check_known(tokenizer, ids, "a prompt")
            out.append(Sample(id=f"{self.name}/L{length}/d{depth:g}/s{i}", input_ids=ids, references=refs,
                              meta={**meta, "sample": i}))
        return out

    # -- training ----------------------------------------------------------------------
    def training_example(self, rng, length, tokenizer) -> TrainingExample:
        """One prompt in the evaluation's own form at a random depth, answered with every value and a stop.

        Curriculum: 1..train_max_queries keys are queried (fewer when the needles would not fit).
        """
        c = self.config
        n_q = int(rng.integers(1, c.train_max_queries + 1))
        if c.haystack != "needle":
            n_q = min(n_q, c.num_keys)
        depth = float(rng.random())
        while True:
            answer_room = 8 * n_q * c.num_values + 2
            try:
                ids, refs, _ = self._build(rng, tokenizer, length - answer_room, depth, n_q)
                break
            except UserError:
                if n_q == 1:
                    raise
                n_q -= 1  # too many needles for this length: ask about fewer keys
        answer = [t for r in refs for t in tokenizer.piece(r)] + tokenizer.piece(".")
        positions = list(range(len(ids) - 1, len(ids) - 1 + len(answer)))
        return TrainingExample(ids=ids + answer, label_positions=positions, labels=answer)


PRESETS = {
    "niah_single_1": ("noise haystack, word key, number value", {"haystack": "noise"}),
    "niah_single_2": ("essay haystack, word key, number value", {"haystack": "essay"}),
    "niah_single_3": ("essay haystack, word key, uuid value", {"haystack": "essay", "value_type": "uuids"}),
    "niah_multikey_1": ("essay haystack, 4 keys written, 1 asked", {"haystack": "essay", "num_keys": 4}),
    "niah_multikey_2": ("haystack of distractor needles", {"haystack": "needle"}),
    "niah_multikey_3": ("haystack of distractor needles, uuid keys and values",
                        {"haystack": "needle", "key_type": "uuids", "value_type": "uuids"}),
    "niah_multivalue": ("essay haystack, 4 values for the key", {"haystack": "essay", "num_values": 4}),
    "niah_multiquery": ("essay haystack, 4 keys asked", {"haystack": "essay", "num_keys": 4, "num_queries": 4}),
}
_classes = {name: preset(RulerNiah, name, f"RULER preset {name}: {doc}.", **defaults)
            for name, (doc, defaults) in PRESETS.items()}
NiahSingle1 = _classes["niah_single_1"]
NiahSingle2 = _classes["niah_single_2"]
NiahSingle3 = _classes["niah_single_3"]
NiahMultikey1 = _classes["niah_multikey_1"]
NiahMultikey2 = _classes["niah_multikey_2"]
NiahMultikey3 = _classes["niah_multikey_3"]
NiahMultivalue = _classes["niah_multivalue"]
NiahMultiquery = _classes["niah_multiquery"]
