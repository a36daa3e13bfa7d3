"""A small source language (English-like) and its translation (French-like), with gold links.

Phenomena that make alignment non-trivial, each with its gold links (Och & Ney
2003: sure links S, possible links P, S within P):

* adjective-noun reordering: ``the red car`` -> ``la voiture rouge``;
* agreement: articles and adjectives take the noun's gender (``le``/``la``,
  ``un``/``une``, ``vert``/``verte``);
* one-to-many, discontiguous: negation ``not`` -> ``ne ... pas`` (both sure);
* one-to-many, contiguous: ``tonight`` -> ``ce soir`` (``soir`` sure, ``ce`` possible);
* many-to-one: ``look at`` -> ``regarde`` (``look`` sure, ``at`` possible);
* a source word with no counterpart: the auxiliary ``does`` of a negation;
* a target word with no counterpart: the complementizer ``que`` after ``je pense``.

Sentences: ``[I think] NP [does not] V NP [tonight] .``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lceval.tasks.alignment.pharaoh import Gold

NOUNS = {"dog": ("chien", "m"), "cat": ("chat", "m"), "bird": ("oiseau", "m"), "tree": ("arbre", "m"),
         "house": ("maison", "f"), "car": ("voiture", "f"), "door": ("porte", "f"), "lamp": ("lampe", "f")}
ADJECTIVES = {"big": "grand", "small": "petit", "green": "vert", "black": "noir", "round": "rond", "red": "rouge"}
VERBS = {"sees": "voit", "takes": "prend", "wants": "veut", "finds": "trouve", "washes": "lave"}
BARE = {"sees": "see", "takes": "take", "wants": "want", "finds": "find", "washes": "wash"}  # after "does not"
PHRASAL = {("looks", "at"): "regarde", ("look", "at"): "regarde"}
ARTICLES = {("the", "m"): "le", ("the", "f"): "la", ("a", "m"): "un", ("a", "f"): "une"}


def feminine(adj: str) -> str:
    return adj if adj.endswith("e") else adj + "e"


def source_vocabulary() -> list[str]:
    words = set(NOUNS) | set(ADJECTIVES) | set(VERBS) | set(BARE.values()) | {"looks", "look", "at"}
    return sorted(words | {"the", "a", "I", "think", "does", "not", "tonight", "."})


def target_vocabulary() -> list[str]:
    words = {n for n, _ in NOUNS.values()} | {"regarde", "je", "pense", "que", "ne", "pas", "ce", "soir", "."}
    words |= set(VERBS.values()) | set(ARTICLES.values())
    words |= set(ADJECTIVES.values()) | {feminine(a) for a in ADJECTIVES.values()}
    return sorted(words)


@dataclass
class Pair:
    source: list[str]
    target: list[str]
    gold: Gold


class _Builder:
    """Appends source and target words and records links by position."""

    def __init__(self):
        self.src: list[str] = []
        self.tgt: list[str] = []
        self.gold = Gold()

    def s(self, word: str) -> int:
        self.src.append(word)
        return len(self.src) - 1

    def t(self, word: str) -> int:
        self.tgt.append(word)
        return len(self.tgt) - 1

    def link(self, i: int, j: int, sure: bool = True) -> None:
        (self.gold.sure if sure else self.gold.possible).add((i, j))


def _noun_phrase(b: _Builder, rng) -> None:
    """DET [ADJ] NOUN -> DET' NOUN' [ADJ'] (reordered, agreeing in gender)."""
    noun = list(NOUNS)[rng.integers(len(NOUNS))]
    tn, gender = NOUNS[noun]
    det = "the" if rng.random() < 0.5 else "a"
    adj = list(ADJECTIVES)[rng.integers(len(ADJECTIVES))] if rng.random() < 0.6 else None
    i_det = b.s(det)
    i_adj = b.s(adj) if adj else None
    i_noun = b.s(noun)
    b.link(i_det, b.t(ARTICLES[(det, gender)]))
    b.link(i_noun, b.t(tn))
    if adj:
        ta = ADJECTIVES[adj]
        b.link(i_adj, b.t(feminine(ta) if gender == "f" else ta))


def sentence(rng: np.random.Generator) -> Pair:
    """One sentence pair with its gold links."""
    b = _Builder()
    if rng.random() < 0.3:  # "I think" -> "je pense que": que has no source counterpart
        b.link(b.s("I"), b.t("je"))
        b.link(b.s("think"), b.t("pense"))
        b.t("que")
    _noun_phrase(b, rng)
    negated = rng.random() < 0.4
    phrasal = rng.random() < 0.25
    if negated:
        b.s("does")  # no counterpart
        i_not = b.s("not")
        b.link(i_not, b.t("ne"))  # discontiguous one-to-many: not -> ne ... pas
    if phrasal:
        i_look = b.s("look" if negated else "looks")
        i_at = b.s("at")
        j = b.t("regarde")
        b.link(i_look, j)
        b.link(i_at, j, sure=False)
    else:
        verb = list(VERBS)[rng.integers(len(VERBS))]
        b.link(b.s(BARE[verb] if negated else verb), b.t(VERBS[verb]))
    if negated:
        b.link(i_not, b.t("pas"))
    _noun_phrase(b, rng)
    if rng.random() < 0.3:  # tonight -> ce soir: one-to-many
        i = b.s("tonight")
        b.link(i, b.t("ce"), sure=False)
        b.link(i, b.t("soir"))
    b.link(b.s("."), b.t("."))
    b.gold.possible |= b.gold.sure  # every sure link is possible (S within P)
    return Pair(b.src, b.tgt, b.gold)
