"""Generated samples are cached with `datasets` and reused; the key covers everything that shapes them."""

from __future__ import annotations

import shutil

import pytest

from lceval.dataset import cache_root, cached_samples, dataset_key
from lceval.tasks.ruler.niah import NiahMultivalue
from lceval.tasks.ruler.vt import VariableTracking
from lceval.tokenizer import word_level


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCEVAL_CACHE", str(tmp_path))
    return tmp_path


def task(cls=NiahMultivalue, seed=0, **over):
    return cls(cls.Config(**{"lengths": [200, 300], "samples": 3, **over}), seed=seed)


def test_second_call_loads_the_same_samples(fresh_cache):
    t = task()
    tok = word_level(t.vocabulary())
    first, hit1 = cached_samples(t, tok)
    again, hit2 = cached_samples(task(), tok)
    assert (hit1, hit2) == (False, True)
    assert [(s.id, s.input_ids, s.answer_ids, s.references, s.meta) for s in again] == \
           [(s.id, s.input_ids, s.answer_ids, s.references, s.meta) for s in first]
    assert len(list(cache_root().iterdir())) == 1


def test_key_covers_seed_config_tokenizer_and_limit(fresh_cache):
    t = task()
    tok = word_level(t.vocabulary())
    keys = {dataset_key(t, tok, None), dataset_key(task(seed=1), tok, None), dataset_key(task(samples=4), tok, None),
            dataset_key(t, word_level(t.vocabulary() + ["extra"]), None), dataset_key(t, tok, 2),
            dataset_key(task(VariableTracking), tok, None)}
    assert len(keys) == 6


def test_exact_match_samples_keep_their_answer_ids(fresh_cache):
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    t = NeedleInAHaystack(NiahConfig(lengths=[100], depths=[0.5], samples=2))
    tok = word_level(t.vocabulary())
    first, _ = cached_samples(t, tok)
    again, hit = cached_samples(t, tok)
    assert hit and [s.answer_ids for s in again] == [s.answer_ids for s in first] and again[0].answer_ids
    vt = task(VariableTracking)
    vt_samples, _ = cached_samples(vt, word_level(vt.vocabulary()))
    reloaded, _ = cached_samples(vt, word_level(vt.vocabulary()))
    assert reloaded[0].answer_ids is None and vt_samples[0].answer_ids is None


def test_a_damaged_entry_is_regenerated(fresh_cache):
    t = task()
    tok = word_level(t.vocabulary())
    first, _ = cached_samples(t, tok)
    (entry,) = list(cache_root().iterdir())
    for f in entry.glob("*.arrow"):
        f.write_bytes(b"garbage")
    again, hit = cached_samples(t, tok)
    assert not hit and [s.input_ids for s in again] == [s.input_ids for s in first]
    shutil.rmtree(cache_root())
    assert cached_samples(t, tok)[1] is False
