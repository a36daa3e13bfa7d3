"""Variable tracking (RULER's vt): chains of assignments hidden in filler.

Each chain starts ``VAR A = 4821907 .`` and continues ``VAR B = VAR A .`` for
``hops`` more statements; ``chains - 1`` distractor chains hold other values.
The question names the first chain's value; the answer is every variable of
that chain (string_match_all, order-free). Statements are spread in order over
the haystack. Recorded: needle_offsets (the chain's statements), distance
(question to the first statement), hops.
"""

from __future__ import annotations

import pydantic

from lceval.task import Length, Sample, Samples, Task, TrainingExample
from lceval.tasks.haystack import REPEAT_WORDS, assemble, evidence, pool_for
from lceval.tasks.ruler.common import PromptConfig, Wording, fill, frame, numbers, pseudo_words, wording, wording_words

STATEMENT = "VAR {name} = {value} ."
QUESTION = ("Question : find every variable that is assigned the value {value} in the text above . "
            "Answer : the variables assigned the value {value} are")
WORDINGS = {
    "words": Wording("", QUESTION, ""),
    "natural": Wording("Memorize the variable assignments in the text below; you will be asked about them "
                       "afterwards.",
                       "Find every variable that is assigned the value {value}, directly or through other "
                       "variables, in the text above.",
                       "Following the assignments, the variables assigned the value {value} are:"),
}
TEMPLATE_WORDS = sorted({w for t in (STATEMENT, QUESTION) for w in t.split() if "{" not in w})


def variable_names(n: int) -> list[str]:
    """Upper-case made-up variable names (deterministic)."""
    return [w.upper() for w in pseudo_words(n, seed=31)]


class VTConfig(PromptConfig):
    lengths: list[Length] = pydantic.Field(default=[256, 512, 1024], min_length=1)
    samples: Samples = 10
    chains: pydantic.PositiveInt = 1
    hops: pydantic.PositiveInt = 4
    pool: int = pydantic.Field(128, ge=16, le=4096, description="distinct variable names and values")
    train_max_hops: pydantic.PositiveInt = pydantic.Field(4, description="training curriculum: hops 1..this")


class VariableTracking(Task):
    name = "vt"
    version = "2"
    Config = VTConfig
    config: VTConfig
    metric = "string_match_all"
    max_new_tokens = 30  # RULER's budget for vt
    group_by = ()
    distance_key = "distance"

    def __init__(self, config: VTConfig, seed: int = 0):
        super().__init__(config, seed)
        self.names = variable_names(config.pool)
        self.values = numbers(config.pool, digits=5, seed=37)

    def vocabulary(self):
        fixed = set(TEMPLATE_WORDS) | set(REPEAT_WORDS) | {".", "?", ":", "="} | wording_words(self.config, WORDINGS)
        return sorted(fixed) + self.names + self.values

    def _pool(self, tokenizer):
        return pool_for(self, "repeat", tokenizer)

    def _build(self, rng, tokenizer, length, hops, chains):
        names = [self.names[i] for i in rng.choice(len(self.names), size=chains * (hops + 1), replace=False)]
        values = [self.values[i] for i in rng.choice(len(self.values), size=chains, replace=False)]
        statements, fracs = [], []
        for c in range(chains):
            chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
            steps = [STATEMENT.format(name=chain[0], value=values[c])]
            steps += [STATEMENT.format(name=b, value=f"VAR {a}") for a, b in zip(chain, chain[1:], strict=False)]
            spots = sorted(rng.random(len(steps)))  # in order: each statement after the one it copies
            statements += [tokenizer.piece(s) for s in steps]
            fracs += spots
        fields = {"value": values[0], "query": values[0]}
        prefix, question = frame(tokenizer, wording(self.config, tokenizer, WORDINGS, fields, self.name))
        budget = length - len(prefix) - sum(map(len, statements)) - len(question)
        hay, starts = fill(self._pool(tokenizer), rng, budget, self.name, length)
        ids, offsets, _ = assemble(prefix, hay, starts, list(zip(fracs, statements, strict=True)), question)
        first = offsets[: hops + 1]
        chain = evidence(first, statements[: hops + 1], [tokenizer.piece(n) for n in names[: hops + 1]])
        meta = {"needle_offsets": first, "distance": len(ids) - min(first), "hops": hops, "chains": chains,
                "_evidence": chain}
        return ids, names[: hops + 1], meta

    def cell_samples(self, cell, tokenizer, n):
        length = cell["context_length"]
        out = []
        for i in range(n):
            ids, refs, meta = self._build(self.rng(length, i), tokenizer, length, self.config.hops, self.config.chains)
            self.check_known(tokenizer, ids, "a prompt")
            out.append(Sample(id=f"{self.name}/L{length}/s{i}", input_ids=ids, references=refs, meta={**meta, "sample": i}))
        return out

    def training_example(self, rng, length, tokenizer) -> TrainingExample:
        """One prompt in the evaluation's own form (curriculum: hops 1..train_max_hops), answered with a stop."""
        hops = int(rng.integers(1, self.config.train_max_hops + 1))
        answer_room = hops + 3
        ids, refs, _ = self._build(rng, tokenizer, length - answer_room, hops, self.config.chains)
        answer = [t for r in refs for t in tokenizer.piece(r)] + tokenizer.piece(".")
        return TrainingExample(ids=ids + answer, label_positions=list(range(len(ids) - 1, len(ids) - 1 + len(answer))),
                               labels=answer)
