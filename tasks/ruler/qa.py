"""Question answering over a local file (RULER's qa_1 / qa_2 layout; nothing is downloaded).

The file is SQuAD JSON (``data[].paragraphs[].{context, qas[].{question, answers[].text}}``)
or HotpotQA JSON (a list of ``{question, answer, context: [[title, [sentences]]], supporting_facts}``).
Each question's gold paragraph goes to the requested depth among distractor
paragraphs from other questions, whole paragraphs only, then filler sentences
to the exact length. Scored with string_match_part (any gold answer found).
Recorded: depth, realized_depth, needle_offsets (the gold paragraph), distance.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pydantic

from lceval.errors import UserError
from lceval.task import Length, SafePath, Sample, Samples, Task
from lceval.tasks.haystack import REPEAT_WORDS, pool_for
from lceval.tasks.ruler.common import PromptConfig, Wording, assemble, fill, frame, wording, wording_words

HEAD = "Answer the question using the documents below ."
QUESTION = "Question : {question} Answer :"


def load_qa(path: Path) -> list[dict]:
    """[{question, answers: [str], gold: str}] from a SQuAD or HotpotQA JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"tasks.qa.path: {path} not found; give a local SQuAD or HotpotQA JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"tasks.qa.path: {path} is not JSON ({type(exc).__name__}); give a SQuAD or HotpotQA file") from None
    items = []
    try:
        if isinstance(data, dict) and "data" in data:  # SQuAD
            for art in data["data"]:
                for para in art["paragraphs"]:
                    for qa in para["qas"]:
                        answers = [a["text"] for a in qa.get("answers", []) if a.get("text")]
                        if answers:
                            items.append({"question": qa["question"], "answers": answers, "gold": para["context"]})
        elif isinstance(data, list):  # HotpotQA
            for ex in data:
                titles = {t for t, _ in ex.get("supporting_facts", [])}
                paras = [" ".join(sents) for title, sents in ex["context"] if title in titles or not titles]
                items.append({"question": ex["question"], "answers": [ex["answer"]], "gold": " ".join(paras)})
        else:
            raise KeyError("data")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"tasks.qa.path: {path} is neither SQuAD nor HotpotQA layout (missing {exc}); "
                        "see the qa task's docstring") from None
    if len(items) < 2:
        raise UserError(f"tasks.qa.path: {path} holds {len(items)} answerable questions; need at least 2")
    return items


WORDINGS = {
    "words": Wording(HEAD, QUESTION, ""),
    "natural": Wording("Answer the question using the documents below. Give only the answer, in a few words.",
                       "Question: {question}", "Answer:"),
}


class QAConfig(PromptConfig):
    path: SafePath
    lengths: list[Length] = pydantic.Field(default=[256, 512], min_length=1)
    depths: list[pydantic.confloat(ge=0.0, le=1.0)] = pydantic.Field(default=[0.0, 0.5, 1.0], min_length=1)
    samples: Samples = 10


class QA(Task):
    """Question answering with the gold paragraph at a chosen depth among distractors."""

    name = "qa"
    version = "2"
    Config = QAConfig
    config: QAConfig
    metric = "string_match_part"
    max_new_tokens = 32  # RULER's budget for qa
    group_by = ("depth",)
    distance_key = "distance"

    @cached_property
    def items(self) -> list[dict]:
        return load_qa(self.config.path)

    def vocabulary(self):
        text = " ".join([HEAD, QUESTION, *REPEAT_WORDS, *wording_words(self.config, WORDINGS)] + [t for it in self.items
                                                          for t in (it["question"], it["gold"], *it["answers"])])
        return sorted({w for w in text.split() if "{" not in w and "}" not in w})

    def samples_per_cell(self):
        return min(self.config.samples, len(self.items))

    def cell_samples(self, cell, tokenizer, n):
        length, depth = cell["context_length"], cell["depth"]
        pool = pool_for(self, "repeat", tokenizer)
        out = []
        for i in range(n):
            rng = self.rng(length, float(depth), i)
            item = self.items[i % len(self.items)]
            gold = tokenizer.piece(item["gold"])
            fields = {"question": item["question"], "query": item["question"]}
            head, question = frame(tokenizer, wording(self.config, tokenizer, WORDINGS, fields, self.name))
            budget = length - len(head) - len(gold) - len(question)
            others = [j for j in rng.permutation(len(self.items)) if self.items[j]["gold"] != item["gold"]]
            hay, starts = [], []
            for j in others:  # whole distractor paragraphs while they fit
                para = tokenizer.piece(self.items[j]["gold"])
                if len(hay) + len(para) > budget:
                    continue
                starts.append(len(hay))
                hay += para
            rest, rest_starts = fill(pool, rng, budget - len(hay), self.name, length)
            starts += [len(hay) + s for s in rest_starts]
            hay += rest
            ids, (offset,), (cut,) = assemble(head, hay, starts, [(depth, gold)], question)
            self.check_known(tokenizer, ids, "a prompt")
            out.append(Sample(
                id=f"qa/L{length}/d{depth:g}/s{i}", input_ids=ids, references=list(item["answers"]),
                meta={"depth": float(depth), "realized_depth": round(cut / max(1, budget), 4),
                      "needle_offsets": [offset], "distance": len(ids) - offset, "sample": i},
            ))
        return out
