"""Needle in a haystack: one "special magic number" hidden at a chosen depth.

Prompt = [BOS] haystack[:b] needle haystack[b:] question; the answer is the
number. The haystack is cut so the prompt is *exactly* the requested context
length in the model's tokens, and the needle goes to the sentence boundary
nearest ``depth * haystack_length``.

Depth 0 puts the needle first; depth 1 puts it right before the question.
Recorded per sample (in the row's ``meta``): depth (requested), realized_depth
(haystack tokens before the needle / haystack tokens), needle_offset (token
index of the needle's first token) and distance (prompt length - needle_offset).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic

from lceval.errors import UserError
from lceval.task import Length, Sample, Samples, Task, TaskConfig, TrainingExample
from lceval.tasks.haystack import ESSAY_WORDS, REPEAT_WORDS, SentencePool, assemble, evidence, nearest, pool_for
from lceval.tokenizer import TextTokenizer

KEYS = [
    "apple", "anchor", "badger", "banjo", "cactus", "canyon", "cobalt", "comet", "dahlia", "dolphin", "ember",
    "falcon", "fjord", "galaxy", "ginger", "glacier", "harp", "hazel", "iris", "ivory", "jasmine", "jaguar",
    "kayak", "kiwi", "lagoon", "lemur", "magnet", "maple", "meadow", "nebula", "nectar", "oasis", "orchid",
    "otter", "parrot", "pepper", "quartz", "quill", "raven", "ripple", "saffron", "sequoia", "tango", "thistle",
    "topaz", "tulip", "umber", "velvet", "violet", "walrus", "willow", "yarrow", "zephyr", "zinnia", "acorn",
    "basalt", "cedar", "delta", "echo", "fennel", "garnet", "heron", "indigo", "juniper",
]  # 64 keys
NEEDLE = "The special magic number for {key} is {value} ."
QUESTION = "What is the special magic number for {key} ? The special magic number for {key} is"
TEMPLATE_WORDS = sorted({w for t in (NEEDLE, QUESTION) for w in t.split() if "{" not in w})


class NiahConfig(TaskConfig):
    lengths: list[Length] = pydantic.Field(default=[128, 256, 512], min_length=1)
    depths: list[pydantic.confloat(ge=0.0, le=1.0)] = pydantic.Field(default=[0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    samples: Samples = 10
    haystack: Literal["repeat", "essay", "mixed"] = "mixed"
    n_values: int = pydantic.Field(128, ge=2, le=900, description="answers are the numbers 100 .. 100 + n_values - 1")
    train_needles: pydantic.PositiveInt = pydantic.Field(3, description="needles (and questions) per training sequence")


class NeedleInAHaystack(Task):
    name = "niah"
    version = "3"
    Config = NiahConfig
    config: NiahConfig
    metric = "exact_match"
    max_new_tokens = 16
    group_by = ("depth",)
    distance_key = "distance"

    def __init__(self, config: NiahConfig, seed: int = 0):
        super().__init__(config, seed)
        self._values = [str(100 + i) for i in range(config.n_values)]

    # -- vocabulary and grid -----------------------------------------------------------
    def values(self) -> list[str]:
        return self._values

    def vocabulary(self) -> list[str]:
        return sorted(set(ESSAY_WORDS + REPEAT_WORDS + TEMPLATE_WORDS + KEYS + [".", "?"])) + self.values()

    def _pool(self, tokenizer: TextTokenizer) -> SentencePool:
        return pool_for(self, self.config.haystack, tokenizer)

    # -- samples -----------------------------------------------------------------------
    def cell_samples(self, cell, tokenizer, n):
        length, depth = cell["context_length"], cell["depth"]
        pool = self._pool(tokenizer)
        out = []
        for i in range(n):
            rng = self.rng(length, float(depth), i)
            key = KEYS[rng.integers(len(KEYS))]
            value = self.values()[rng.integers(self.config.n_values)]
            needle = tokenizer.piece(NEEDLE.format(key=key, value=value))
            question = tokenizer.piece(QUESTION.format(key=key)) + tokenizer.suffix()  # a chat template's tail
            prefix = tokenizer.prefix()
            budget = length - len(prefix) - len(needle) - len(question)
            if budget < 0:
                raise UserError(
                    f"tasks.niah.lengths: {length} tokens cannot hold the needle and question "
                    f"({length - budget} tokens with this tokenizer); use lengths >= {length - budget}"
                )
            hay, starts = pool.fill(rng, budget)
            ids, (offset,), (at,) = assemble(prefix, hay, starts, [(depth, needle)], question)
            self.check_known(tokenizer, ids + tokenizer.piece(value), "a prompt or its answer")
            out.append(Sample(
                id=f"niah/L{length}/d{depth:g}/s{i}",
                input_ids=ids,
                references=[value],
                answer_ids=tokenizer.piece(value),
                meta={"depth": float(depth), "realized_depth": round(at / max(1, budget), 4), "needle_offset": offset,
                      "distance": len(ids) - offset, "sample": i, "haystack": pool.kind,
                      "sentence_cut": pool.last_cut, "_evidence": evidence([offset], [needle], [tokenizer.piece(value)])},
            ))
        return out

    # -- training ----------------------------------------------------------------------
    def training_example(self, rng: np.random.Generator, length: int, tokenizer: TextTokenizer) -> TrainingExample:
        """Several needles in a haystack, then a question for each with its answer and a full stop.

        Only the answers (and the stop that ends each) are labelled; many needles per sequence give many
        training signals per step (the multi-query recall recipe).
        """
        pool = self._pool(tokenizer)
        k = int(rng.integers(1, self.config.train_needles + 1))
        keys = rng.choice(len(KEYS), size=k, replace=False)
        vals = [self.values()[j] for j in rng.integers(self.config.n_values, size=k)]
        needles = [tokenizer.piece(NEEDLE.format(key=KEYS[a], value=v)) for a, v in zip(keys, vals, strict=True)]
        order = rng.permutation(k)
        stop = tokenizer.piece(".")
        qa = [(tokenizer.piece(QUESTION.format(key=KEYS[keys[j]])), tokenizer.piece(vals[j]) + stop) for j in order]
        prefix = tokenizer.prefix()
        used = len(prefix) + sum(map(len, needles)) + sum(len(q) + len(a) for q, a in qa)
        budget = length - used
        if budget < 0:
            raise UserError(f"training length {length} is too short for {k} needles; raise it or lower train_needles")
        hay, starts = pool.fill(rng, budget)
        cuts = sorted(nearest(starts + [budget], float(x) * budget) for x in rng.random(k))
        ids = list(prefix)
        prev = 0
        for cut, needle in zip(cuts, needles, strict=True):
            ids += hay[prev:cut] + needle
            prev = cut
        ids += hay[prev:]
        positions, labels = [], []
        for q, a in qa:
            ids += q
            for tok in a:
                positions.append(len(ids) - 1)
                labels.append(tok)
                ids.append(tok)
        return TrainingExample(ids=ids, label_positions=positions, labels=labels)
