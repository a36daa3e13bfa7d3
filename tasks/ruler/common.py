"""Shared pieces of the RULER-style tasks: value pools, placement in a haystack, presets."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pydantic

from lceval.errors import UserError
from lceval.task import TaskConfig
from lceval.tasks.haystack import SentencePool
from lceval.tokenizer import TextTokenizer

_CONS = "bdfgklmnprstvz"
_VOW = "aeiou"


def pseudo_words(n: int, seed: int = 7) -> list[str]:
    """n distinct pronounceable made-up words of two or three syllables (deterministic)."""
    syll = [c + v for c in _CONS for v in _VOW]  # 70 syllables
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        k = 2 if len(out) < 4000 else 3
        out["".join(syll[i] for i in rng.integers(len(syll), size=k))] = None
    return list(out)


def numbers(n: int, digits: int = 7, seed: int = 11) -> list[str]:
    """n distinct numbers of ``digits`` digits (deterministic)."""
    rng = np.random.default_rng(seed)
    lo, hi = 10 ** (digits - 1), 10**digits
    out: dict[str, None] = {}
    while len(out) < n:
        out[str(int(rng.integers(lo, hi)))] = None
    return list(out)


HEX_GROUPS = [f"{i:04x}" for i in np.random.default_rng(13).choice(65536, size=96, replace=False)]


def uuids(n: int, seed: int = 17) -> list[str]:
    """n distinct uuid-like strings of four hex groups (``a3f0-19bc-77de-0c4e``), from 96 declared groups."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out["-".join(HEX_GROUPS[i] for i in rng.integers(len(HEX_GROUPS), size=4))] = None
    return list(out)


def fill(pool: SentencePool, rng: np.random.Generator, budget: int, task: str, length: int) -> tuple[list[int], list[int]]:
    if budget < 0:
        raise UserError(f"tasks.{task}.lengths: {length} tokens cannot hold the task's needles and question "
                        f"({length - budget} tokens with this tokenizer); use lengths >= {length - budget}")
    return pool.fill(rng, budget)


def preset(base: type, name: str, doc: str, **defaults: Any) -> type:
    """A task class registered as ``name``: ``base`` with other config defaults (still overridable)."""
    cfg_base = base.Config
    fields = {k: (cfg_base.model_fields[k].annotation, pydantic.Field(v)) for k, v in defaults.items()}
    config = pydantic.create_model(f"{name}_config", __base__=cfg_base, **fields)
    return type(name, (base,), {"name": name, "Config": config, "__doc__": doc, "__module__": base.__module__})


# -- prompt wording ------------------------------------------------------------------------------------------------
class Wording(NamedTuple):
    """A prompt's text around the context, shaped as RULER's protocol: an instruction before the context, the
    question after it, and an answer prefix that opens the answer (with a chat template, the assistant's turn,
    after the generation prompt, so an instruction-tuned model completes the answer instead of restating the
    question). Fields use ``{placeholders}`` the task fills."""

    instruction: str
    question: str
    answer_prefix: str


#: the built-in wordings: ``words`` is the spaced-punctuation form the reference models are trained on (every
#: word one token of a word-level tokenizer); ``natural`` is written for pretrained models
BUILTIN = ("words", "natural")


class PromptConfig(TaskConfig):
    """The prompt's wording (every RULER-style task has these two fields)."""

    template: str = pydantic.Field(
        "auto", description="auto: 'words' for word-level tokenizers (lceval's reference models), 'natural' "
                            "otherwise; words; natural; or your own text holding {context} once, e.g. "
                            "'Read this. {context} What is the number for {query}?'")
    answer_prefix: str | None = pydantic.Field(
        None, description="text that opens the answer (default: the wording's own; with your own template, none)")

    @pydantic.field_validator("template")
    @classmethod
    def _template(cls, v):
        if v in ("auto", *BUILTIN):
            return v
        if v.count("{context}") != 1:
            raise ValueError("must be auto, words, natural, or a text holding {context} exactly once "
                             "(where the haystack goes)")
        return v


def wording(config: PromptConfig, tokenizer: TextTokenizer, builtin: dict[str, Wording], fields: dict[str, str],
            task: str) -> Wording:
    """The configured wording with its placeholders filled (``fields``: the task's names, ``query`` among them)."""
    name = config.template
    if name == "auto":
        name = "words" if tokenizer.name == "word-level" else "natural"
    if name in builtin:
        base = builtin[name]
    else:
        before, after = name.split("{context}")
        base = Wording(before, after, "")
    if config.answer_prefix is not None:
        base = base._replace(answer_prefix=config.answer_prefix)
    try:
        return Wording(*(part.format(**fields) for part in base))
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"tasks.{task}.template: cannot fill {exc} (this task's placeholders: "
                        f"{', '.join('{' + k + '}' for k in fields)}, and {{context}})") from None


def words_of(*texts: str) -> set[str]:
    """The whitespace-separated words of template texts, placeholders left out."""
    return {w for t in texts for w in t.split() if "{" not in w and "}" not in w}


def wording_words(config: PromptConfig, builtin: dict[str, Wording]) -> set[str]:
    """The words a word-level tokenizer needs for the configured wording beyond the task's own (natural or a
    user's text; ``words`` and ``auto`` need none: auto picks words for word-level tokenizers)."""
    if config.template in ("auto", "words"):
        texts = []
    else:
        texts = list(builtin["natural"]) if config.template == "natural" else [config.template]
    if config.answer_prefix:
        texts.append(config.answer_prefix)
    return words_of(*texts)


def frame(tokenizer: TextTokenizer, words: Wording) -> tuple[list[int], list[int]]:
    """Ids before the context (the prompt's start, the instruction) and after it (the question, a chat template's
    tail, the answer prefix). Every piece is counted, so prompt lengths stay exact."""
    head = tokenizer.prefix() + (tokenizer.piece(words.instruction.strip()) if words.instruction.strip() else [])
    tail = tokenizer.piece(words.question.strip()) if words.question.strip() else []
    tail = tail + tokenizer.suffix()
    if words.answer_prefix.strip():
        # after a chat template's generation prompt the answer starts a line (no space before it)
        text = words.answer_prefix.strip()
        tail = tail + (tokenizer.continuation(text) if tokenizer.chat is not None else tokenizer.piece(text))
    return head, tail
