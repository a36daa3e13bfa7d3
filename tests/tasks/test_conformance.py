"""Conformance: every registered task honours the Task contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lceval import registry
from lceval.config import validate_task_config
from lceval.metrics import ALL_METRICS
from lceval.rows import Row
from lceval.tokenizer import word_level

IDENTITY = set(Row.model_fields)  # a task's meta can never shadow a row field


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "squad.json"
    paras = [("The lighthouse keeper Maren lit the lamp at dusk .", "Who lit the lamp ?", "Maren"),
             ("The ferry to Orlo leaves from the north pier .", "Where does the ferry leave from ?", "the north pier"),
             ("Tomas planted seven apple trees in spring .", "How many apple trees did Tomas plant ?", "seven")]
    data = {"data": [{"paragraphs": [{"context": c, "qas": [{"question": q, "answers": [{"text": a}]}]}
                                     for c, q, a in paras]}]}
    path.write_text(json.dumps(data))
    return path


def defaults(name, qa_file):
    return {"path": str(qa_file)} if name == "qa" else {}


@pytest.mark.parametrize("name", registry.tasks.names())
def test_task_contract(name, qa_file):
    cls = registry.tasks.get(name)
    cfg = validate_task_config(cls, defaults(name, qa_file), f"tasks.{name}")  # defaults must validate
    task = cls(cfg, seed=3)
    assert task.metric in ALL_METRICS and task.max_new_tokens > 0
    tok = word_level(task.vocabulary())
    samples = task.samples(tok, limit=2)
    assert len(samples) == len(task.cells()) * min(2, task.samples_per_cell())
    assert len({s.id for s in samples}) == len(samples)
    unk = tok.backend.token_to_id("[UNK]")
    stops = task.stop_ids(tok)
    for s, cell in zip(samples, [c for c in task.cells() for _ in range(min(2, task.samples_per_cell()))], strict=True):
        if "context_length" in cell:
            assert len(s.input_ids) == cell["context_length"]  # exact, in the model's tokens
        assert unk not in s.input_ids  # the vocabulary covers what the task emits
        assert s.references and all(isinstance(r, str) and r for r in s.references)
        assert not set(s.meta) & IDENTITY  # meta is the task's own namespace
        for key in task.group_by:
            assert key in s.meta
        if task.distance_key:
            assert 0 < s.meta[task.distance_key] <= len(s.input_ids)
        json.dumps(s.meta)  # rows must serialise
        # the task scores its own references as a perfect answer
        if task.metric == "label_accuracy":  # labels are the tokens after their positions, scored by argmax
            inside = [(p, lab) for p, lab in zip(s.label_positions, s.labels, strict=True) if p + 1 < len(s.input_ids)]
            assert s.labels and all(s.input_ids[p + 1] == lab for p, lab in inside)  # teacher-forced ones
            assert task.score(s, s.labels, "", True) == 1.0
            wrong = [s.labels[0] + 1] + s.labels[1:]
            assert task.score(s, wrong, "", True) == (len(s.labels) - 1) / len(s.labels)
        elif task.metric == "exact_match":
            assert s.answer_ids and unk not in s.answer_ids
            assert task.score(s, s.answer_ids, " ".join(s.references), True) == 1.0
            assert task.score(s, s.answer_ids + s.answer_ids[:1], " ".join(s.references), True) == 0.0
        else:
            assert task.score(s, [], " ".join(s.references), True) == 1.0
            assert task.score(s, [], "", True) == 0.0
            ref_ids = [t for r in s.references for t in tok.piece(r)]
            assert unk not in ref_ids and not set(ref_ids) & set(stops)  # generation can emit the answer
    again = cls(cfg, seed=3).samples(tok, limit=2)
    assert [s.input_ids for s in again] == [s.input_ids for s in samples]
    other = cls(cfg, seed=4).samples(tok, limit=2)
    assert [s.input_ids for s in other] != [s.input_ids for s in samples]


@pytest.mark.parametrize("name", [n for n in registry.tasks.names() if n != "qa"])
def test_training_examples_fit_and_label_the_stop(name):
    cls = registry.tasks.get(name)
    task = cls(validate_task_config(cls, {}, name), seed=0)
    tok = word_level(task.vocabulary())
    stop = tok.piece(".")[0] if task.metric != "label_accuracy" else None
    rng = np.random.default_rng(0)
    for _ in range(5):
        ex = task.training_example(rng, 160, tok)
        assert len(ex.ids) <= 160 and ex.labels
        assert all(ex.ids[p + 1] == lab for p, lab in zip(ex.label_positions, ex.labels, strict=True))
        if task.metric != "label_accuracy":  # (label tasks are read by argmax, never generated)
            assert ex.labels[-1] == stop  # the answer ends with the stop generation looks for
