"""Conformance: every registered task honours the Task contract."""

from __future__ import annotations

import pytest

from lceval import registry
from lceval.config import validate_task_config
from lceval.tokenizer import word_level

REQUIRED_META = {"context_length", "depth", "needle_offset", "distance"}


@pytest.mark.parametrize("name", registry.tasks.names())
def test_task_contract(name):
    cls = registry.tasks.get(name)
    cfg = validate_task_config(cls, {}, f"tasks.{name}")  # defaults must validate
    task = cls(cfg, seed=3)
    tok = word_level(task.vocabulary())
    samples = task.samples(tok, limit=2)
    assert len(samples) == len(task.cells()) * min(2, task.samples_per_cell())
    assert len({s.id for s in samples}) == len(samples)
    unk = tok.backend.token_to_id("[UNK]")
    for s in samples:
        assert REQUIRED_META <= set(s.meta), s.meta
        assert s.meta["context_length"] == len(s.input_ids)
        assert 0 <= s.meta["needle_offset"] < len(s.input_ids)
        assert s.meta["distance"] == len(s.input_ids) - s.meta["needle_offset"]
        assert 0.0 <= s.meta["depth"] <= 1.0
        assert s.answer_ids and unk not in s.input_ids + s.answer_ids  # the vocabulary covers what it emits
    again = cls(cfg, seed=3).samples(tok, limit=2)
    assert [s.input_ids for s in again] == [s.input_ids for s in samples]
