"""The task plugin interface.

A task is deterministic from (config, seed): it yields samples for its grid and
records position metadata on every sample. Scoring of tasks with a known answer
is the runner's teacher-forced exact match (see ``lceval.scoring``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pydantic

from lceval.tokenizer import TextTokenizer


class TaskConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass
class Sample:
    """One prompt with its known answer, in the model's own tokens."""

    id: str
    input_ids: list[int]
    answer_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        return len(self.input_ids)


@dataclass
class TrainingExample:
    """A training sequence and the positions whose next token is labelled."""

    ids: list[int]
    label_positions: list[int]  # predict ids[p + 1] from position p
    labels: list[int]


class Task:
    name: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig

    def __init__(self, config: TaskConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    def vocabulary(self) -> list[str]:
        """Every word the generator can emit (the reference tokenizer is built over it)."""
        raise NotImplementedError

    def cells(self) -> list[dict[str, Any]]:
        """The grid cells, each a dict of the parameters that define it."""
        raise NotImplementedError

    def samples_per_cell(self) -> int:
        raise NotImplementedError

    def cell_samples(self, cell: dict[str, Any], tokenizer: TextTokenizer, n: int) -> list[Sample]:
        raise NotImplementedError

    def samples(self, tokenizer: TextTokenizer, limit: int | None = None) -> list[Sample]:
        n = self.samples_per_cell() if limit is None else min(limit, self.samples_per_cell())
        return [s for cell in self.cells() for s in self.cell_samples(cell, tokenizer, n)]

    def training_example(self, rng: np.random.Generator, length: int, tokenizer: TextTokenizer) -> TrainingExample:
        raise NotImplementedError(f"task {self.name!r} has no training generator")

    def rng(self, *parts: Any) -> np.random.Generator:
        """A generator seeded from (seed, task, *parts) only: one cell never shifts another."""
        digest = hashlib.sha256(repr((self.seed, self.name, *parts)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))
