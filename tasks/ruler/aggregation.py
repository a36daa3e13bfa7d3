"""Aggregation tasks (RULER's cwe and fwe): which words occur most often?

``cwe`` (common words extraction): ``num_common`` words appear ``freq_common``
times each among uncommon words that appear ``freq_uncommon`` times each; the
answer is the common words. When a long context needs more distinct uncommon
words than the pool holds, both frequencies are scaled up together (keeping
their ratio), so the common words stay strictly the most frequent; the
realised frequencies are recorded.

``fwe`` (frequent words extraction): coded words with Zipf(alpha) counts; the
answer is the ``top`` most frequent words. Counts are the Zipf expectation,
made strictly decreasing over the top ``top + 1`` ranks, so the answer is
unambiguous.

Both score with string_match_all; neither has a depth.
"""

from __future__ import annotations

import numpy as np
import pydantic

from lceval.errors import UserError
from lceval.task import Length, Sample, Samples, Task, TrainingExample
from lceval.tasks.ruler.common import PromptConfig, Wording, frame, pseudo_words, wording, wording_words, words_of

CWE_HEAD = "Below is a list of words ."
CWE_QUESTION = ("Question : what are the {n} most common words in the list above ? "
                "Answer : the {n} most common words are")
FWE_HEAD = "Read the coded text below and find the most frequent coded words ."
FWE_QUESTION = ("Question : what are the {n} most frequent coded words in the text above ? "
                "Answer : the {n} most frequent coded words are")


CWE_WORDINGS = {
    "words": Wording(CWE_HEAD, CWE_QUESTION, ""),
    "natural": Wording("Below is a list of words. Keep track of how often each one appears.",
                       "What are the {n} most common words in the list above?",
                       "The {n} most common words in the list above are:"),
}
FWE_WORDINGS = {
    "words": Wording(FWE_HEAD, FWE_QUESTION, ""),
    "natural": Wording("Read the coded text below and keep track of how often each coded word appears.",
                       "What are the {n} most frequently appearing coded words in the text above?",
                       "The {n} most frequent coded words in the text above are:"),
}


class _WordCount(Task):
    """A list of made-up words, then a question whose answer is the n most frequent ones."""

    metric = "string_match_all"
    group_by = ()
    distance_key = None
    WORDINGS: dict[str, Wording]  # "words": what the reference models are trained on; "natural"

    def n_answers(self) -> int:
        raise NotImplementedError

    def vocabulary(self):
        fixed = words_of(*self.WORDINGS["words"]) | {".", "?", ":", str(self.n_answers())}
        fixed |= wording_words(self.config, self.WORDINGS)
        return sorted(fixed) + self.words

    def _frame_for(self, tokenizer, length):
        n = str(self.n_answers())
        return self._frame(tokenizer, wording(self.config, tokenizer, self.WORDINGS, {"n": n, "query": n}, self.name),
                           length)

    def __init__(self, config, seed: int = 0):
        super().__init__(config, seed)
        self.words = pseudo_words(config.pool, seed=41)

    def _frame(self, tokenizer, words: Wording, length: int):
        """Prefix, question, each pool word's tokens, the token budget and the word budget."""
        prefix, q = frame(tokenizer, words)
        word_ids = [tokenizer.piece(w) for w in self.words]
        self._stop = next((p for p in map(tokenizer.piece, [".", ",", "the", "a"]) if len(p) == 1), [])
        budget = length - len(prefix) - len(q)
        mean = sum(map(len, word_ids)) / len(word_ids)
        return prefix, q, word_ids, budget, int(budget / mean)

    def _fit(self, keep: list[int], spare: list[int], unused: list[int], word_ids, budget: int, rng, length):
        """Words whose tokens fill ``budget`` exactly: all of ``keep``, as much of ``spare`` as fits, then
        unused pool words (once each) and, last, single-token filler words. Returns shuffled token ids."""
        used = sum(len(word_ids[w]) for w in keep)
        if used > budget:
            raise UserError(f"tasks.{self.name}.lengths: {length} tokens cannot hold the answer words; "
                            f"use longer lengths")
        bag = list(keep)
        for w in spare:
            if used + len(word_ids[w]) <= budget:
                bag.append(w)
                used += len(word_ids[w])
        for w in unused:  # distinct words seen once never compete with the answer
            if used == budget:
                break
            if used + len(word_ids[w]) <= budget:
                bag.append(w)
                used += len(word_ids[w])
        taken, protected = set(bag), set(keep)
        ones = [word_ids[w] for w in unused if len(word_ids[w]) == 1 and w not in taken]
        # then single-token words already used as fillers (one more occurrence never ties an answer word)
        ones = [word_ids[w] for w in taken - protected if len(word_ids[w]) == 1][::-1] + ones
        pieces = [word_ids[w] for w in bag]
        while used < budget:  # top up with single tokens: unused words, else the list's full stop
            if not ones and not self._stop:
                raise UserError(f"task {self.name}: cannot fill {length} tokens exactly with this tokenizer")
            pieces.append(ones.pop() if ones else self._stop)
            used += 1
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        return [t for p in pieces for t in p]

    def cell_samples(self, cell, tokenizer, n):
        length = cell["context_length"]
        out = []
        for i in range(n):
            ids, refs, meta = self._build(self.rng(length, i), tokenizer, length)
            self.check_known(tokenizer, ids, "a prompt")
            out.append(Sample(id=f"{self.name}/L{length}/s{i}", input_ids=ids, references=refs, meta={**meta, "sample": i}))
        return out

    def training_example(self, rng, length, tokenizer) -> TrainingExample:
        room = 2 * self.n_answers() + 1
        ids, refs, _ = self._build(rng, tokenizer, length - room)
        answer = [t for r in refs for t in tokenizer.piece(r)] + tokenizer.piece(".")
        return TrainingExample(ids=ids + answer, label_positions=list(range(len(ids) - 1, len(ids) - 1 + len(answer))),
                               labels=answer)


class CWEConfig(PromptConfig):
    lengths: list[Length] = pydantic.Field(default=[256, 512, 1024], min_length=1)
    samples: Samples = 10
    num_common: pydantic.PositiveInt = 10
    freq_common: pydantic.PositiveInt = 30
    freq_uncommon: pydantic.PositiveInt = 3
    pool: int = pydantic.Field(1024, ge=64, le=8192, description="distinct words")

    @pydantic.model_validator(mode="after")
    def _freqs(self):
        if self.freq_common <= self.freq_uncommon:
            raise ValueError("freq_common must be larger than freq_uncommon")
        return self


class CommonWords(_WordCount):
    """RULER's cwe: the words that occur freq_common times among words that occur freq_uncommon times."""

    name = "cwe"
    version = "1"
    Config = CWEConfig
    config: CWEConfig
    max_new_tokens = 120  # RULER's budget for cwe
    WORDINGS = CWE_WORDINGS

    def n_answers(self):
        return self.config.num_common

    def _build(self, rng, tokenizer, length):
        c = self.config
        n_common = c.num_common
        prefix, q, word_ids, budget, words = self._frame_for(tokenizer, length)
        fc, fu = c.freq_common, c.freq_uncommon
        n_unc = len(self.words) - n_common
        while words - n_common * fc > n_unc * fu:  # the pool is too small: scale both frequencies
            fu += 1
            fc = max(c.freq_common, round(fu * c.freq_common / c.freq_uncommon))
        while n_common * fc > 2 * words // 3 and fc > fu + 1:  # a short context: fewer repeats of the commons
            fc -= 1
        order = [int(i) for i in rng.permutation(len(self.words))]
        common, uncommon = order[:n_common], order[n_common:]
        n_full = max(0, (words - n_common * fc) // fu)
        keep = [w for w in common for _ in range(fc)]
        spare = [w for w in uncommon[:n_full] for _ in range(fu)]
        spare = [spare[i] for i in rng.permutation(len(spare))]
        body = self._fit(keep, spare, uncommon[n_full:], word_ids, budget, rng, length)
        refs = [self.words[w] for w in common]
        return prefix + body + q, refs, {"freq_common": fc, "freq_uncommon": fu, "num_common": n_common}


class FWEConfig(PromptConfig):
    lengths: list[Length] = pydantic.Field(default=[256, 512, 1024], min_length=1)
    samples: Samples = 10
    alpha: pydantic.PositiveFloat = 2.0
    top: pydantic.PositiveInt = 3
    pool: int = pydantic.Field(1024, ge=16, le=8192, description="distinct coded words")


class FrequentWords(_WordCount):
    """RULER's fwe: coded words with Zipf counts; the answer is the most frequent ones."""

    name = "fwe"
    version = "1"
    Config = FWEConfig
    config: FWEConfig
    max_new_tokens = 50  # RULER's budget for fwe
    WORDINGS = FWE_WORDINGS

    def n_answers(self):
        return self.config.top

    def _build(self, rng, tokenizer, length):
        c = self.config
        prefix, q, word_ids, budget, words = self._frame_for(tokenizer, length)
        ranks = np.arange(1, len(self.words) + 1, dtype=float)
        p = ranks**-c.alpha / (ranks**-c.alpha).sum()
        order = [int(i) for i in rng.permutation(len(self.words))]
        while True:  # shrink the word budget until the top ranks' occurrences fit in the token budget
            counts = np.floor(words * p).astype(int)
            counts[0] += max(0, words - counts.sum())  # the remainder goes to the most frequent word
            for r in range(min(c.top, len(counts) - 1), 0, -1):  # strictly decreasing over the top + 1 ranks
                counts[r - 1] = max(counts[r - 1], counts[r] + 1)
            if counts[c.top] < 1:
                raise UserError(f"tasks.{self.name}.lengths: {length} tokens are too few for a clear top {c.top}")
            if sum(len(word_ids[order[r]]) * int(counts[r]) for r in range(c.top + 1)) <= budget:
                break
            words = int(words * 0.9)
        keep = [order[r] for r in range(c.top + 1) for _ in range(int(counts[r]))]
        # the tail may lose occurrences to fit the tokens; it never reaches the top ranks' counts
        spare = [order[r] for r in range(c.top + 1, len(counts)) for _ in range(min(int(counts[r]), int(counts[c.top]) - 1))]
        unused = [order[r] for r in range(len(counts)) if counts[r] == 0]
        body = self._fit(keep, spare, unused, word_ids, budget, rng, length)
        refs = [self.words[order[r]] for r in range(c.top)]
        return prefix + body + q, refs, {"top_counts": [int(x) for x in counts[: c.top + 1]], "alpha": c.alpha}
