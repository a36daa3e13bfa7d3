"""Needle placement, exact context length, determinism, cell independence."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import byte_bpe
from lceval.errors import UserError
from lceval.tasks.haystack import essay_sentence
from lceval.tasks.niah import KEYS, NEEDLE, QUESTION, NeedleInAHaystack, NiahConfig
from lceval.tokenizer import TextTokenizer, word_level

LENGTHS = [96, 131, 257, 512, 1000, 2048]
DEPTHS = [0.0, 0.1, 0.33, 0.5, 0.77, 0.9, 1.0]


def make_task(**cfg) -> NeedleInAHaystack:
    base = {"lengths": LENGTHS, "depths": DEPTHS, "samples": 3}
    return NeedleInAHaystack(NiahConfig(**(base | cfg)), seed=cfg.pop("seed", 0) if "seed" in cfg else 0)


def bpe_tokenizer() -> TextTokenizer:
    """A small byte-level BPE trained here on generated text (nothing downloaded)."""
    rng = np.random.default_rng(0)
    corpus = [essay_sentence(rng) for _ in range(2000)]
    corpus += [NEEDLE.format(key=k, value=100 + i) + " " + QUESTION.format(key=k) for i, k in enumerate(KEYS)]
    corpus += ["The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."] * 20
    return byte_bpe(corpus, 400)


TOKENIZERS = {"word": lambda task: word_level(task.vocabulary()), "bpe": lambda task: bpe_tokenizer()}


@pytest.mark.parametrize("haystack", ["repeat", "essay", "mixed"])
@pytest.mark.parametrize("tok_name", ["word", "bpe"])
def test_length_and_needle_placement(tok_name, haystack):
    task = make_task(haystack=haystack)
    tok = TOKENIZERS[tok_name](task)
    pool = task._pool(tok)
    for s in task.samples(tok):
        L, depth = len(s.input_ids), s.meta["depth"]
        target = int(s.id.split("/")[1][1:])
        assert len(s.input_ids) == L == target  # exact, in this tokenizer's tokens
        needle = tok.piece(NEEDLE.format(key=_key(s, tok), value=tok.decode(s.answer_ids).strip()))
        off = s.meta["needle_offset"]
        assert s.input_ids[off : off + len(needle)] == needle
        question_len = len(tok.piece(QUESTION.format(key=_key(s, tok))))
        haystack_len = L - len(tok.prefix()) - len(needle) - question_len
        # within one filler sentence of depth x haystack length
        assert abs((off - len(tok.prefix())) - depth * haystack_len) <= pool.max_len
        assert s.meta["distance"] == L - off
        assert s.input_ids[: len(tok.prefix())] == tok.prefix()


def _key(sample, tok) -> str:
    key = tok.decode(sample.input_ids[-20:]).split()[-2]  # "... for KEY is"
    assert key in KEYS
    return key


def test_bpe_ids_equal_tokenizing_the_whole_text():
    """Concatenated piece ids are what the tokenizer gives for the joined text."""
    task = make_task(lengths=[300], depths=[0.5], samples=4)
    tok = bpe_tokenizer()
    for s in task.samples(tok):
        body = s.input_ids[1:]
        text = tok.decode(body)
        assert tok.backend.encode(text, add_special_tokens=False).ids == body


def test_deterministic_and_cells_independent():
    tok = word_level(make_task().vocabulary())
    a = {s.id: s.input_ids for s in make_task().samples(tok)}
    b = {s.id: s.input_ids for s in make_task().samples(tok)}
    assert a == b
    # adding lengths/depths and samples never changes an existing cell's samples
    c = {s.id: s.input_ids for s in make_task(lengths=[64] + LENGTHS + [700], depths=[0.2] + DEPTHS,
                                              samples=5).samples(tok)}
    assert all(c[k] == v for k, v in a.items())
    # a different seed changes them
    other = NeedleInAHaystack(NiahConfig(lengths=LENGTHS, depths=DEPTHS, samples=3), seed=1)
    d = {s.id: s.input_ids for s in other.samples(tok)}
    assert sum(d[k] != v for k, v in a.items()) > len(a) * 0.9


def test_depth_orders_needle_offsets():
    tok = word_level(make_task().vocabulary())
    task = make_task(lengths=[1000], samples=1)
    offs = [s.meta["needle_offset"] for s in task.samples(tok)]
    assert offs == sorted(offs) and offs[0] == 1 and offs[-1] > 900


def test_too_short_length_is_a_user_error():
    task = make_task(lengths=[10], depths=[0.5], samples=1)
    with pytest.raises(UserError, match="tasks.niah.lengths: 10 tokens cannot hold"):
        task.samples(word_level(task.vocabulary()))


def test_training_example_labels_answers():
    task = make_task()
    tok = word_level(task.vocabulary())
    ex = task.training_example(np.random.default_rng(0), 128, tok)
    assert len(ex.ids) == 128 and ex.label_positions
    values = set(task.values())
    stop = tok.piece(".")[0]
    words = [tok.decode([lab]) for lab in ex.labels]
    assert words[1::2] == ["."] * (len(words) // 2)  # each answer is labelled with the stop that ends it
    for p, lab in zip(ex.label_positions, ex.labels, strict=True):
        assert ex.ids[p + 1] == lab
        if lab != stop:
            assert tok.decode([lab]) in values
            assert ex.ids[:p].count(lab) >= 1  # the answer is recallable: its needle appears earlier


def test_hugging_face_tokenizer():
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer().backend, bos_token="<s>")
    tok = TextTokenizer.from_hf(hf)
    assert tok.bos_id == hf.bos_token_id and tok.vocab_size == len(hf)
    task = make_task(lengths=[100, 333], depths=[0.0, 0.5, 1.0], samples=2)
    for s in task.samples(tok):
        assert len(s.input_ids) == int(s.id.split("/")[1][1:])
        assert s.input_ids[0] == hf.bos_token_id
        body = s.input_ids[1:]
        assert hf.encode(hf.decode(body), add_special_tokens=False) == body
    assert tok.fingerprint() == TextTokenizer.from_hf(hf).fingerprint()


def test_realized_depth_is_recorded_beside_the_requested_one():
    task = make_task(lengths=[128, 1000], depths=[0.0, 0.3, 0.7, 1.0], samples=2)
    tok = word_level(task.vocabulary())
    for s in task.samples(tok):
        real, asked = s.meta["realized_depth"], s.meta["depth"]
        assert 0.0 <= real <= 1.0
        assert abs(real - asked) <= 0.15  # at most about one sentence away at 128 tokens
    short = [s for s in task.samples(tok) if len(s.input_ids) == 128 and s.meta["depth"] == 0.3]
    assert any(s.meta["realized_depth"] != 0.3 for s in short)  # sentence boundaries move it: recorded, not hidden


def test_a_value_the_tokenizer_cannot_represent_is_an_error():
    task = make_task(lengths=[64], depths=[0.5], samples=2)
    tok = word_level([w for w in task.vocabulary() if not w.isdigit()])
    with pytest.raises(UserError, match="cannot represent"):
        task.samples(tok)


@pytest.mark.parametrize("tok_name", ["word", "bpe"])
def test_haystack_sentences_stay_whole(tok_name):
    task = make_task(lengths=[100, 257, 1000], depths=[0.0, 0.5, 1.0], samples=3)
    tok = TOKENIZERS[tok_name](task)
    pool = task._pool(tok)
    whole = {tuple(x) for x in pool.ids}
    for s in task.samples(tok):
        assert len(s.input_ids) == int(s.id.split("/")[1][1:])
        assert s.meta["sentence_cut"] is False
    rng = np.random.default_rng(0)
    for budget in [37, 64, 129, 500]:
        hay, starts = pool.fill(rng, budget)
        assert len(hay) == budget and not pool.last_cut
        bounds = starts + [budget]
        assert all(tuple(hay[a:b]) in whole for a, b in zip(bounds, bounds[1:], strict=False))
