"""Shared pieces of the RULER-style tasks: value pools, placement in a haystack, presets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from lceval.errors import UserError
from lceval.tasks.haystack import SentencePool, nearest

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


def assemble(prefix: list[int], hay: list[int], starts: list[int], pieces: list[tuple[float, list[int]]],
             suffix: list[int]) -> tuple[list[int], list[int], list[int]]:
    """prefix + haystack with each piece inserted at the sentence boundary nearest its fraction + suffix.

    Returns the ids, each piece's token offset, and each piece's haystack cut (haystack
    tokens before it; cut / len(hay) is its realized depth), in the order given.
    """
    budget = len(hay)
    bounds = starts + [budget]
    cuts = [nearest(bounds, f * budget) for f, _ in pieces]
    order = sorted(range(len(pieces)), key=lambda i: (cuts[i], i))
    ids, prev, offsets = list(prefix), 0, [0] * len(pieces)
    for i in order:
        ids += hay[prev : cuts[i]]
        offsets[i] = len(ids)
        ids += pieces[i][1]
        prev = cuts[i]
    return ids + hay[prev:] + suffix, offsets, cuts


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
