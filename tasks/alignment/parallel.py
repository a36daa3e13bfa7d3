"""Bring your own parallel text: a source file and a target file (one sentence per line, words separated
by spaces) and a gold file in Pharaoh format (one line per sentence pair, zero-based word indices).

    tasks:
      alignment:
        data: {source: data/en.txt, target: data/fr.txt, gold: data/en-fr.gold}

Every problem is a one-line error naming the file and the line: a missing file, files of different
lengths, an empty sentence, a malformed link, a link past the end of its sentence. Each file is a
``DataFile``: its contents are hashed into the run identity, so editing them starts a new run rather
than mixing results.
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from lceval.errors import UserError
from lceval.task import DataFile
from lceval.tasks.alignment.grammar import Pair
from lceval.tasks.alignment.pharaoh import read_pharaoh


def _lines(path: Path, what: str) -> list[list[str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file ({what} sentences, one per line)") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            raise UserError(f"{path} line {n}: empty sentence; give one sentence per line, no blank lines")
        out.append(words)
    return out


def load_pairs(source: Path, target: Path, gold: Path) -> list[Pair]:
    """Sentence pairs with their gold links, checked against each other."""
    src, tgt, links = _lines(source, "source"), _lines(target, "target"), read_pharaoh(gold)
    if not (len(src) == len(tgt) == len(links)):
        raise UserError(f"parallel data of different lengths: {source} has {len(src)} lines, {target} "
                        f"{len(tgt)}, {gold} {len(links)}; give one line per sentence pair in each")
    if not src:
        raise UserError(f"{source}: no sentences; give at least one sentence pair")
    for n, (s, t, g) in enumerate(zip(src, tgt, links, strict=True), start=1):
        for i, j in sorted(g.possible):
            if i >= len(s) or j >= len(t):
                raise UserError(f"{gold} line {n}: link {i}-{j} points past the sentence pair ({len(s)} source "
                                f"words, {len(t)} target words; indices are zero-based)")
    return [Pair(s, t, g) for s, t, g in zip(src, tgt, links, strict=True)]


class ParallelData(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    source: DataFile = pydantic.Field(description="source sentences, one per line")
    target: DataFile = pydantic.Field(description="their translations, one per line")
    gold: DataFile = pydantic.Field(description="gold links per line, Pharaoh format (i-j sure, ipj possible)")
    _pairs: list[Pair] = pydantic.PrivateAttr(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _load(self):
        try:
            self._pairs = load_pairs(self.source.path, self.target.path, self.gold.path)
        except UserError as exc:  # a ValueError becomes a config error naming tasks.alignment.data
            raise ValueError(str(exc)) from None
        return self

    @property
    def pairs(self) -> list[Pair]:
        return self._pairs
