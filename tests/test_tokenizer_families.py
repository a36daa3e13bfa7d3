"""Prompts are token-exact for every tokenizer family: byte-level BPE, SentencePiece-style, WordPiece.

Each tokenizer is trained here on generated text (nothing downloaded) and wrapped by transformers,
as a user's checkpoint would be. The ids lceval feeds a model must equal what the tokenizer produces
for the prompt's text, with no stray word-boundary tokens, at exactly the requested length.
"""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from conftest import assert_chat_exact, train_byte_bpe  # noqa: E402
from lceval.tasks.haystack import essay_sentence  # noqa: E402
from lceval.tasks.niah import KEYS, NEEDLE, QUESTION, NeedleInAHaystack, NiahConfig  # noqa: E402
from lceval.tasks.ruler.niah import NiahSingle3  # noqa: E402
from lceval.tokenizer import TextTokenizer  # noqa: E402


def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    text = [essay_sentence(rng) for _ in range(1500)]
    text += [NEEDLE.format(key=k, value=100 + i) + " " + QUESTION.format(key=k) for i, k in enumerate(KEYS)]
    text += ["The grass is green . The sky is blue . The sun is yellow . Here we go . There and back again ."] * 20
    return text


def sentencepiece_style() -> Tokenizer:
    """Llama-2-like ("legacy"): Metaspace, spaces become ▁ and one ▁ is always prepended, BPE."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>", "<unk>"]))
    # encode as the converted Llama-2 tokenizers do: the normalizer prepends ▁ and turns spaces into ▁
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    return tok


def wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    return tok


FAMILIES = {
    "byte-level-bpe": lambda: transformers.PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(corpus(), 500),
                                                                   bos_token="<s>"),
    "sentencepiece": lambda: transformers.PreTrainedTokenizerFast(tokenizer_object=sentencepiece_style(),
                                                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "wordpiece": lambda: transformers.PreTrainedTokenizerFast(tokenizer_object=wordpiece(), bos_token="[CLS]",
                                                              unk_token="[UNK]"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_niah_prompts_are_what_the_tokenizer_produces(family):
    hf = FAMILIES[family]()
    tok = TextTokenizer.from_hf(hf)
    task = NeedleInAHaystack(NiahConfig(lengths=[100, 257], depths=[0.0, 0.5, 1.0], samples=2, haystack="mixed"))
    for s in task.samples(tok):
        assert len(s.input_ids) == int(s.id.split("/")[1][1:])  # exact length
        body = s.input_ids[1:]
        text = hf.decode(body)
        assert hf.encode(text, add_special_tokens=False) == body  # token-for-token the tokenizer's own
        assert "  " not in text  # no stray word-boundary tokens (they decode to doubled spaces)
        assert hf.decode(s.answer_ids).strip() == s.references[0]


def test_the_old_method_gave_stray_boundary_tokens_with_sentencepiece():
    """Why piece() anchors: encoding " word" alone makes the space a token of its own."""
    hf = FAMILIES["sentencepiece"]()
    alone = hf.encode(" magic", add_special_tokens=False)
    assert hf.convert_ids_to_tokens(alone)[0] == "▁"  # the stray token the old method fed the model
    assert hf.convert_ids_to_tokens(TextTokenizer.from_hf(hf).piece("magic")) == ["▁magic"]
    text = "The grass is green . The sky is blue ."
    old = [t for w in text.split() for t in hf.encode(" " + w, add_special_tokens=False)]
    assert old != hf.encode(text, add_special_tokens=False)  # not what the tokenizer produces for the text
    assert "  " in hf.decode(old)  # the stray tokens are extra spaces the model was fed
    new = [t for w in text.split() for t in TextTokenizer.from_hf(hf).piece(w)]
    assert new == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_correct_answer_scores_as_correct_in_every_family(family):
    """Generation decoded back to text and scored: the references' own tokens score 1."""
    hf = FAMILIES[family]()
    tok = TextTokenizer.from_hf(hf)
    niah = NeedleInAHaystack(NiahConfig(lengths=[120], depths=[0.5], samples=2))
    for s in niah.samples(tok):
        assert niah.score(s, s.answer_ids, tok.decode(s.answer_ids).strip(), stopped=True) == 1.0
    ruler = NiahSingle3(NiahSingle3.Config(lengths=[400], depths=[0.5], samples=2, haystack="noise"))
    try:
        samples = ruler.samples(tok)
    except Exception as exc:  # noqa: BLE001 - a uuid the tokenizer cannot spell is a clear error, never a wrong score
        assert "cannot represent" in str(exc)
        return
    for s in samples:
        ref_ids = [t for r in s.references for t in tok.piece(r)]
        assert ruler.score(s, ref_ids, tok.decode(ref_ids).strip(), stopped=True) == 1.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chat_template_prompts_are_exact_in_every_family(family):
    """With a chat template, a prompt is the template applied to the message: token for token, at the exact length."""
    hf = FAMILIES[family]()
    # role markers made of words every family's corpus holds (an unknown token would be refused)
    hf.chat_template = ("{{ bos_token }}{% for m in messages %}Here we go .{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %} There and back again{% endif %}")
    tok = TextTokenizer.from_hf(hf, chat_template=True)
    task = NeedleInAHaystack(NiahConfig(lengths=[100, 257], depths=[0.0, 1.0], samples=2, haystack="mixed"))
    samples = task.samples(tok)
    assert all(len(s.input_ids) == int(s.id.split("/")[1][1:]) for s in samples)
    assert_chat_exact(tok, samples)
