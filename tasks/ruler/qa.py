"""Question answering over a local file (RULER's qa_1 / qa_2 layout; nothing is downloaded).

The file is SQuAD JSON (``data[].paragraphs[].{context, qas[].{question, answers[].text}}``)
or HotpotQA JSON (a list of ``{question, answer, context: [[title, [sentences]]], supporting_facts}``).
Each question's gold paragraph goes to the requested depth among distractor
paragraphs from other questions, whole paragraphs only, then filler sentences
to the exact length. Scored with string_match_part (any gold answer found).
Recorded: depth, realized_depth, needle_offsets (the gold paragraph), distance.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pydantic

from lceval.errors import UserError
from lceval.task import DataFile, Length, Sample, Samples, Task
from lceval.tasks.haystack import REPEAT_WORDS, assemble, evidence, pool_for
from lceval.tasks.ruler.common import PromptConfig, Wording, fill, frame, wording, wording_words

HEAD = "Answer the question using the documents below ."
QUESTION = "Question : {question} Answer :"


def _text(value, what: str, where: str) -> str:
    """A question, answer or paragraph as text: a string, or a number as JSON writes it (``1990``)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
        raise UserError(f"{where}: {what} must be non-empty text (or a number), got {json.dumps(value)[:40]}")
    return str(value)


def _squad(data: dict, path: Path) -> list[dict]:
    items = []
    for a, art in enumerate(data["data"]):
        for p, para in enumerate(art["paragraphs"]):
            where = f"{path} data[{a}].paragraphs[{p}]"
            gold = _text(para.get("context"), "context", where)
            for q, qa in enumerate(para["qas"]):
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise UserError(f"{where}.qas[{q}]: answers must be a list of {{\"text\": ...}} objects "
                                    "(SQuAD layout)")
                texts = [_text(x["text"], "an answer", f"{where}.qas[{q}]") for x in answers if x.get("text") != ""]
                if texts:
                    items.append({"question": _text(qa["question"], "question", f"{where}.qas[{q}]"),
                                  "answers": texts, "gold": gold})
    return items


def _hotpot(data: list, path: Path) -> list[dict]:
    items = []
    for n, ex in enumerate(data):
        where = f"{path} [{n}]"
        if not isinstance(ex, dict):
            raise UserError(f"{where}: each HotpotQA example must be an object with question, answer, context")
        titles = {t for t, _ in ex.get("supporting_facts", [])}
        context = ex["context"]
        if not isinstance(context, list):
            raise UserError(f"{where}: context must be a list of [title, [sentences]] (HotpotQA layout)")
        paras = [" ".join(_text(x, "a sentence", where) for x in sents) for title, sents in context
                 if title in titles or not titles]
        items.append({"question": _text(ex["question"], "question", where),
                      "answers": [_text(ex["answer"], "answer", where)],
                      "gold": _text(" ".join(paras), "context", where)})
    return items


def load_qa(path: Path) -> list[dict]:
    """[{question, answers: [str], gold: str}] from a SQuAD or HotpotQA JSON file.

    Answers given as JSON numbers are accepted as their text (``1990`` -> ``"1990"``); any other non-text
    value is an error naming its place in the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found; give a local SQuAD or HotpotQA JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({type(exc).__name__}); give a SQuAD or HotpotQA file") from None
    try:
        if isinstance(data, dict) and "data" in data:
            items = _squad(data, path)
        elif isinstance(data, list):
            items = _hotpot(data, path)
        else:
            raise KeyError("data")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is neither SQuAD nor HotpotQA layout ({type(exc).__name__}: {exc}); "
                        "see the qa task's docstring") from None
    if len(items) < 2:
        raise UserError(f"{path} holds {len(items)} answerable questions; need at least 2")
    return items


WORDINGS = {
    "words": Wording(HEAD, QUESTION, ""),
    "natural": Wording("Answer the question using the documents below. Give only the answer, in a few words.",
                       "Question: {question}", "Answer:"),
}


class QAConfig(PromptConfig):
    path: DataFile = pydantic.Field(description="a SQuAD or HotpotQA JSON file (hashed into the run identity)")
    lengths: list[Length] = pydantic.Field(default=[256, 512], min_length=1)
    depths: list[pydantic.confloat(ge=0.0, le=1.0)] = pydantic.Field(default=[0.0, 0.5, 1.0], min_length=1)
    samples: Samples = 10

    @pydantic.field_validator("path")
    @classmethod
    def _readable(cls, v: DataFile) -> DataFile:
        try:  # read when the config is validated: a bad file is a config error before anything runs
            _items(v.path, v.sha256)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return v

    @property
    def items(self) -> list[dict]:
        """The file's answerable questions (read once per content)."""
        return _items(self.path.path, self.path.sha256)


@functools.lru_cache(maxsize=8)
def _items(path: Path, sha256: str) -> list[dict]:
    return load_qa(path)


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

    @property
    def items(self) -> list[dict]:
        return self.config.items

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
                      "needle_offsets": [offset], "distance": len(ids) - offset, "sample": i,
                      "_evidence": evidence([offset], [gold], [tokenizer.piece(item["answers"][0])])},
            ))
        return out
