"""The RULER-style suite: exact lengths in two tokenizer families, answers recoverable by simple oracles."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import byte_bpe, word_corpus
from lceval import registry
from lceval.config import validate_task_config
from lceval.errors import UserError
from lceval.metrics import string_match_all, string_match_part
from lceval.tasks.ruler.qa import load_qa
from lceval.tokenizer import TextTokenizer, word_level

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SUITE = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa"]


def make(name, **over):
    cls = registry.tasks.get(name)
    cfg = {"lengths": [400, 777], "samples": 3, **over}
    if name == "qa":
        cfg["path"] = str(FIXTURES / "qa_squad.json")
    if "depths" in cls.Config.model_fields:
        cfg.setdefault("depths", [0.0, 0.5, 1.0])
    return cls(validate_task_config(cls, cfg, name), seed=1)


def bpe_for(task) -> TextTokenizer:
    """A byte-level BPE trained here on the task's own words (multi-token words and numbers included)."""
    return byte_bpe(word_corpus(task.vocabulary(), 12), 300)


@pytest.mark.parametrize("family", ["word", "bpe"])
@pytest.mark.parametrize("name", SUITE)
def test_exact_lengths(name, family):
    # a BPE tokenizer is not word-level, so template auto picks the natural wording; its vocabulary (the corpus the
    # BPE is trained on) holds that wording's words when the task is told so
    task = make(name, **({"template": "natural", "lengths": [500, 777]} if family == "bpe" else {}))
    tok = word_level(task.vocabulary()) if family == "word" else bpe_for(task)
    samples = task.samples(tok)
    assert samples
    for s in samples:
        assert len(s.input_ids) == int(s.id.split("/")[1][1:])
        if family == "bpe":  # the ids are what the tokenizer produces for the prompt's text
            body = s.input_ids[1:]
            assert tok.backend.encode(tok.decode(body), add_special_tokens=False).ids == body
        text = tok.decode(s.input_ids)
        assert string_match_all(" ".join(s.references), s.references) == 1.0
        for ref in s.references:
            assert ref in text or name in ("cwe", "fwe", "qa")  # needle answers are in the prompt


def prompt_text(task, s):
    return word_level(task.vocabulary()).decode(s.input_ids)


def test_multikey_oracle_finds_the_queried_key_among_distractors():
    for name in ["niah_multikey_1", "niah_multikey_2", "niah_multikey_3"]:
        task = make(name)
        tok = word_level(task.vocabulary())
        for s in task.samples(tok):
            text = tok.decode(s.input_ids)
            key = re.search(r"Answer : the special magic \w+ for (.+?) are$", text).group(1)
            needles = re.findall(r"One of the special magic \w+ for (\S+) is (\S+) \.", text)
            keys = [k for k, _ in needles]
            assert keys.count(key) == 1  # the queried key is written once
            assert len(set(keys)) >= 2  # distractor needles with other keys
            oracle = [v for k, v in needles if k == key]
            assert string_match_all(" ".join(oracle), s.references) == 1.0


def test_multivalue_and_multiquery_answers_are_every_value():
    for name, n in [("niah_multivalue", 4), ("niah_multiquery", 4)]:
        task = make(name)
        tok = word_level(task.vocabulary())
        for s in task.samples(tok):
            assert len(s.references) == n and len(set(s.references)) == n
            text = tok.decode(s.input_ids)
            asked = re.search(r"Answer : the special magic numbers for (.+?) are$", text).group(1).split(" and ")
            table = dict(re.findall(r"special magic numbers for (\S+) is (\d+) \.", text)) if n == 1 else None
            found = [v for k, v in re.findall(r"special magic numbers for (\S+) is (\d+) \.", text) if k in asked]
            assert sorted(found) == sorted(s.references) and table is None
            assert string_match_all(" ".join(reversed(found)), s.references) == 1.0  # order-free


def test_vt_chain_resolves():
    task = make("vt", chains=2, hops=3)
    tok = word_level(task.vocabulary())
    for s in task.samples(tok):
        text = tok.decode(s.input_ids)
        value = re.search(r"assigned the value (\d+) are$", text).group(1)
        assigns = re.findall(r"VAR (\w+) = (VAR \w+|\d+) \.", text)
        holders = {name for name, rhs in assigns if rhs == value}
        changed = True
        while changed:  # follow the copies
            new = {name for name, rhs in assigns if rhs.startswith("VAR ") and rhs[4:] in holders}
            changed = not new <= holders
            holders |= new
        assert sorted(holders) == sorted(s.references) and len(holders) == 4
        assert len(assigns) == 2 * 4  # a distractor chain with another value


@pytest.mark.parametrize("name", ["cwe", "fwe"])
def test_answer_words_are_strictly_the_most_frequent(name):
    task = make(name, lengths=[300, 2000])
    tok = word_level(task.vocabulary())
    pool = set(task.words)
    for s in task.samples(tok):
        counts = Counter(w for w in tok.decode(s.input_ids).split() if w in pool)
        ranked = counts.most_common()
        k = len(s.references)
        assert {w for w, _ in ranked[:k]} == set(s.references)
        assert len(ranked) > k and ranked[k - 1][1] > ranked[k][1]  # other words, strictly less frequent
        oracle = " ".join(w for w, _ in ranked[:k])
        assert string_match_all(oracle, s.references) == 1.0


def test_qa_layouts_and_scoring():
    squad, hotpot = load_qa(FIXTURES / "qa_squad.json"), load_qa(FIXTURES / "qa_hotpot.json")
    assert len(squad) == 6 and len(hotpot) == 3 and hotpot[0]["answers"] == ["Maren"]
    task = make("qa")
    s = task.samples(word_level(task.vocabulary()))[0]
    assert string_match_part("i think the north pier", ["the north pier", "north pier"]) == 1.0
    assert task.metric == "string_match_part" and s.references


@pytest.mark.parametrize("content,message", [("{", "is not JSON"), ('{"data": [{"x": 1}]}', "neither SQuAD nor HotpotQA"),
                                            ("[]", "need at least 2")])
def test_qa_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_qa(path)
    with pytest.raises(UserError, match="not found"):
        load_qa(tmp_path / "missing.json")


def test_a_word_the_tokenizer_cannot_represent_is_an_error():
    task = make("niah_single_2")
    tok = word_level([w for w in task.vocabulary() if not w.isdigit()])  # no numbers: values become [UNK]
    with pytest.raises(UserError, match="cannot represent"):
        task.samples(tok)


def test_presets_are_rulers_settings_and_overridable():
    assert make("niah_single_3").config.value_type == "uuids"
    assert make("niah_multikey_3").config.key_type == "uuids" and make("niah_multikey_3").config.haystack == "needle"
    assert make("niah_multivalue").config.num_values == 4 and make("niah_multiquery").config.num_queries == 4
    assert make("niah_single_1", haystack="essay").config.haystack == "essay"
    budgets = {n: registry.tasks.get(n).max_new_tokens for n in ["niah_single_1", "vt", "cwe", "fwe", "qa"]}
    assert budgets == {"niah_single_1": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
