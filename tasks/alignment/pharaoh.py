"""Pharaoh alignment format: one line per sentence pair, ``i-j`` a sure link, ``ipj`` a possible one.

Indices are zero-based word positions (source i, target j). Reading a malformed line
is a one-line error naming the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lceval.errors import UserError

_LINK = re.compile(r"^(\d+)([-p])(\d+)$")


@dataclass
class Gold:
    """The gold links of one sentence pair (possible links include the sure ones)."""

    sure: set[tuple[int, int]] = field(default_factory=set)
    possible: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self):
        self.possible = set(self.possible) | set(self.sure)


def format_line(gold: Gold) -> str:
    links = [(i, j, "-") for i, j in gold.sure] + [(i, j, "p") for i, j in gold.possible - gold.sure]
    return " ".join(f"{i}{kind}{j}" for i, j, kind in sorted(links))


def parse_line(line: str, where: str = "<text>") -> Gold:
    gold = Gold()
    for token in line.split():
        m = _LINK.match(token)
        if not m:
            raise UserError(f"{where}: {token!r} is not a Pharaoh link (expected i-j for sure or ipj for possible, "
                            "zero-based)")
        i, kind, j = int(m.group(1)), m.group(2), int(m.group(3))
        (gold.sure if kind == "-" else gold.possible).add((i, j))
    gold.possible |= gold.sure
    return gold


def write_pharaoh(path: Path, golds: list[Gold]) -> None:
    Path(path).write_text("".join(format_line(g) + "\n" for g in golds), encoding="utf-8")


def read_pharaoh(path: Path) -> list[Gold]:
    """Every line of a Pharaoh file; a malformed one is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: gold alignment file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file of Pharaoh links") from None
    return [parse_line(line, f"{path} line {n}") for n, line in enumerate(text.splitlines(), start=1)]
