"""Tokenizers: tasks produce text pieces, models turn them into their own tokens.

``TextTokenizer`` is the small protocol tasks rely on. Pieces are encoded with
a leading space and concatenated, so a prompt's length in the model's tokens
is exact by construction and no whole haystack is ever re-tokenized.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from lceval.errors import ConfigError, UserError

SPECIALS = ["[PAD]", "[UNK]", "[BOS]"]
_ANCHOR = "."  # a neighbour for encoding a piece as it appears mid-text (see TextTokenizer.piece)
PIECE_METHOD = "anchored/1"  # part of every sample-cache key: a change here regenerates cached samples


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` or a transformers tokenizer."""

    def __init__(self, backend, *, bos_id: int | None = None, eos_id: int | None = None, name: str = "custom",
                 chat: tuple[list[int], list[int]] | None = None, end_of_turn: tuple[int, ...] = ()):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.end_of_turn = tuple(end_of_turn)  # other ids the model ends an answer with (``<|im_end|>``, ...)
        self.name = name
        self.chat = chat  # a chat template's (head, tail) ids around the user's message, if prompts are wrapped
        self._cache: dict[str, list[int]] = {}  # encode(text)
        self._pieces: dict[str, list[int]] = {}  # piece(text)
        self._words: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}  # words(words)
        self._anchor: list[int] | None = None  # ids of the anchor piece() encodes after
        self._fingerprint: str | None = None

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of one text piece (no special tokens). Cached per piece."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._encode(text)
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def _encode(self, text: str) -> list[int]:
        if isinstance(self.backend, Tokenizer):
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text, add_special_tokens=False)  # transformers PreTrainedTokenizer(Fast)

    def piece(self, text: str) -> list[int]:
        """Ids of ``text`` as it appears inside running text, after a space.

        Encoded as the tail of ``ANCHOR + " " + text`` after the anchor's own ids, so the
        space is represented the way the tokenizer represents it mid-text (``Ġword`` for
        byte-level BPE, ``▁word`` for SentencePiece, a plain word for WordPiece) and never as
        a stray token of its own (encoding ``" " + text`` alone gives ``▁ ▁word`` with a
        SentencePiece tokenizer). Pieces then concatenate to exactly the ids the tokenizer
        produces for the whole text.
        """
        ids = self._pieces.get(text)
        if ids is None:
            ids = self._mid_text(" " + text)
            if len(self._pieces) < 200_000:
                self._pieces[text] = ids
        return ids

    def continuation(self, text: str) -> list[int]:
        """Ids of ``text`` directly after earlier text, with no space between (an answer after a chat template's
        generation prompt, which ends a line)."""
        return self._mid_text(text)

    def _mid_text(self, text: str) -> list[int]:
        """Ids of ``text`` as it follows other text: the tail of ``ANCHOR + text`` after the anchor's own ids
        (``text`` alone if the anchor merges with it)."""
        both = self._encode(_ANCHOR + text)
        skip = self._anchor_tokens(both)
        return both[skip:] if skip is not None else self._encode(text)

    def _anchor_tokens(self, ids: list[int]) -> int | None:
        """How many leading ``ids`` (of ``ANCHOR + text``) are the anchor's own; None where the anchor merged with
        the text after it (then the text is encoded alone)."""
        if self._anchor is None:
            self._anchor = self._encode(_ANCHOR)
        return len(self._anchor) if ids[: len(self._anchor)] == self._anchor else None

    def words(self, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of the words joined by spaces, as running text, and each word's token span [start, end).

        The text is encoded once (so the tokenizer merges as it would in a document) and every token
        is mapped to the word its character offsets fall in. A token that joins two words has no
        single word; that is an error naming the words.
        """
        text = " ".join(words)
        if text in self._words:
            return self._words[text]
        ids, offsets = self._offsets(_ANCHOR + " " + text)  # as running text, like _mid_text
        skip = self._anchor_tokens(ids)
        if skip is None:
            ids, offsets = self._offsets(text)
        else:
            base = len(_ANCHOR) + 1
            ids, offsets = ids[skip:], [(a - base, b - base) for a, b in offsets[skip:]]
        bounds, pos = [], 0
        for w in words:
            start = text.index(w, pos)
            bounds.append((start, start + len(w)))
            pos = start + len(w)
        spans: list[list[int]] = [[] for _ in words]
        k = 0
        for t, (a, b) in enumerate(offsets):
            while k < len(words) - 1 and a >= bounds[k][1]:  # a token starting in the gap belongs to the next word
                k += 1
            if b > bounds[k][1] and k < len(words) - 1 and b > bounds[k + 1][0]:
                raise UserError(f"the tokenizer joins {words[k]!r} and {words[k + 1]!r} into one token; "
                                "word alignment needs each token inside one word")
            spans[k].append(t)
        missing = [w for w, s in zip(words, spans, strict=True) if not s]
        if missing:
            raise UserError(f"no token of its own for {missing[0]!r}; word alignment needs each word to have a token")
        out = ids, [(s[0], s[-1] + 1) for s in spans]
        if len(self._words) < 200_000:
            self._words[text] = out
        return out

    def _offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if isinstance(self.backend, Tokenizer):
            enc = self.backend.encode(text, add_special_tokens=False)
            return enc.ids, [tuple(o) for o in enc.offsets]
        if not getattr(self.backend, "is_fast", False):
            raise UserError(f"tokenizer {self.name!r} has no character offsets (a slow tokenizer); word alignment "
                            "needs a fast tokenizer (tokenizer.json)")
        enc = self.backend(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def prefix(self) -> list[int]:
        """Ids every prompt starts with: the chat template's head, else the BOS token if there is one."""
        if self.chat is not None:
            return list(self.chat[0])
        return [] if self.bos_id is None else [self.bos_id]

    def suffix(self) -> list[int]:
        """Ids every prompt ends with: the chat template's tail (its generation prompt), else none.

        Tasks count prefix and suffix against the requested length, so a wrapped prompt is still exact.
        """
        return [] if self.chat is None else list(self.chat[1])

    def end_ids(self) -> list[int]:
        """The ids a model ends its answer with: EOS and any end-of-turn tokens, each once."""
        ids = ([] if self.eos_id is None else [self.eos_id]) + list(self.end_of_turn)
        return list(dict.fromkeys(ids))

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, if the tokenizer has one."""
        if isinstance(self.backend, Tokenizer):
            return self.backend.token_to_id("[UNK]")
        return getattr(self.backend, "unk_token_id", None)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size() if isinstance(self.backend, Tokenizer) else len(self.backend)

    def fingerprint(self) -> str:
        """Stable id of the vocabulary, used to key sample caches (computed once)."""
        if self._fingerprint is None:
            backend = self.backend
            raw = backend.to_str() if isinstance(backend, Tokenizer) else str(sorted(backend.get_vocab().items()))
            if self.chat is not None:  # wrapped prompts are other samples
                raw += f"chat:{self.chat}"
            self._fingerprint = hashlib.sha256(raw.encode()).hexdigest()[:16]
        return self._fingerprint

    @classmethod
    def from_hf(cls, tokenizer, chat_template: bool = False, end_ids: tuple[int, ...] = ()) -> TextTokenizer:
        """Wrap a transformers tokenizer (its BOS token, if any, starts every prompt).

        ``end_ids``: tokens besides EOS that end an answer (a generation config's ``eos_token_id`` list); with a
        chat template, the special token that closes an assistant turn is added too.

        With ``chat_template`` every prompt becomes one user message in the tokenizer's chat template with a
        generation prompt: the template's text before and after the message is tokenized once, as the
        template renders it, and counts against the length budget.
        """
        chat = None
        if chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("chat_template", "the model's tokenizer has no chat template (no "
                                  "chat_template in tokenizer_config.json or chat_template.jinja); set it to false")

            def render(content: str, tokenize: bool):
                return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=tokenize,
                                                     add_generation_prompt=True, **({"return_dict": False}
                                                                                    if tokenize else {}))

            marker = "\x00LCEVAL-MESSAGE\x00"
            head, tail = render(marker, False).split(marker)
            plain = cls(tokenizer)
            # the head starts the text; the tail follows running text, so it is encoded as a piece is (anchored)
            chat = (plain._encode(head), plain._mid_text(tail))
            probe = "Here"  # a message as tasks write one: pieces after a space
            if list(render(" " + probe, True)) != chat[0] + plain.piece(probe) + chat[1]:
                raise ConfigError("chat_template", "the model's chat template does not tokenize the same around "
                                  "a message as on its own, so prompt lengths could not be exact; set it to false "
                                  "and write the template's text into the task's template instead")
            end_ids = (*end_ids, *_end_of_turn(tokenizer))
        return cls(tokenizer, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                   name=type(tokenizer).__name__, chat=chat, end_of_turn=end_ids)

    # -- persistence ------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self.backend.save(str(path))

    @classmethod
    def load(cls, path: Path) -> TextTokenizer:
        tok = Tokenizer.from_file(str(path))
        return cls(tok, bos_id=tok.token_to_id("[BOS]"), name="word-level")


def _end_of_turn(tokenizer) -> list[int]:
    """The special token a chat template writes right after an assistant message (``<|im_end|>``), if any."""
    marker = "\x00LCEVAL-ANSWER\x00"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    except Exception:  # a template that refuses this conversation: no end-of-turn token is known
        return []
    after = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False) if after.strip() else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special}
    return ids[:1] if ids and ids[0] in special else []


def word_level(vocabulary: list[str]) -> TextTokenizer:
    """A word-level tokenizer over ``vocabulary``: every whitespace-separated word of a prompt is one token.

    Tasks write punctuation as separate words (``is 123 .``) and declare every word they emit.
    """
    words = list(dict.fromkeys(SPECIALS + [w for w in vocabulary if w.strip()]))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    # split on whitespace only: a declared word such as ``3f81-bf35`` stays one token and decodes to itself
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TextTokenizer(backend, bos_id=words.index("[BOS]"), name="word-level")
