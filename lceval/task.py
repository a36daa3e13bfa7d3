"""The task plugin interface.

A task is deterministic from (config, seed): it yields samples for its grid,
records position metadata on every sample, and scores its own samples.

Scoring. A task declares its ``metric`` (see ``lceval.metrics``): ``exact_match``
for one ordered answer, or RULER's ``string_match_all`` / ``string_match_part``
over several references. The runner obtains the model's answer by greedy
generation with a KV cache (up to ``max_new_tokens``, stopping at the first of
``stop_words``), or, where it is provably the same, by teacher forcing in one
pass: a sample with one ordered answer (``answer_ids``) scored by exact match,
whose answer holds no stop token. Then "greedy emits the answer tokens and then
a stop token" is exactly "the argmax at each answer position is the answer
token and the argmax after it is a stop token".

Metadata. ``Sample.meta`` is the task's own namespace (depth, needle offsets,
distance, hops...); the runner stores it under the row's ``meta`` key, so it
can never overwrite a row's identity fields. The row's ``context_length`` is
measured by the runner in the model's tokens. ``group_by`` names the meta keys
the report groups by besides the length; ``distance_key`` the one holding the
query-to-needle distance, if any.

Training contract. ``training_example(rng, length, tokenizer)`` returns one
sequence of *at most* ``length`` tokens with the positions whose next token is
labelled. Examples may have different lengths: the trainer pads them (right
padding, which causal attention never sees) and batches them; a task never
pads. A task may offer a curriculum by sampling its difficulty (pairs, hops,
needles) up to a maximum in its config. A recipe can mix several tasks into one
model (``train.tasks: {niah_multikey_1: 1, vt: 1}``); the tokenizer then covers
every task's ``vocabulary()``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import pydantic

from lceval import metrics
from lceval.errors import UserError
from lceval.tokenizer import TextTokenizer


@dataclass
class ReportPart:
    """What a task adds to a report: ``sections`` [(title, DataFrame)] and ``images`` [(title, PNG path)]."""

    sections: list[tuple[str, Any]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)


class TaskConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    @pydantic.field_validator("lengths", "depths", mode="before", check_fields=False)
    @classmethod
    def _no_booleans(cls, v):
        if isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise ValueError("must be numbers, not true/false")
        return v

    @pydantic.field_validator("lengths", "depths", check_fields=False)
    @classmethod
    def _distinct(cls, v):
        shown = [f"{x:g}" for x in v]  # as they appear in sample ids
        dup = sorted({s for s in shown if shown.count(s) > 1})
        if dup:
            raise ValueError(f"lists {', '.join(dup)} more than once (or values too close to tell apart); "
                             "give each once")
        return v


def _safe_path(v: Path, info: pydantic.ValidationInfo) -> Path:
    if "\x00" in str(v):
        raise ValueError("a path cannot contain a NUL byte")
    base = (info.context or {}).get("base_dir")
    return v if base is None or v.is_absolute() else (Path(base) / v).resolve()


#: a filesystem path from a config: refused early when the OS could never open it; relative to the config
#: file's folder when the config is validated with ``context={"base_dir": ...}`` (as ``lceval run`` does for tasks)
SafePath = Annotated[Path, pydantic.AfterValidator(_safe_path)]


class DataFile(pydantic.BaseModel):
    """A task's data file, given in a config as a plain path and hashed when the config is validated.

    The contents' sha256 is part of the task config's dump, so of the sample-cache key and of the run
    identity: editing the file starts a new run with new samples, never scores old references or mixes
    old and new data under one run id. Declare every file a task reads as a ``DataFile``.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    path: SafePath
    sha256: str = pydantic.Field("", description="the file's contents; always recomputed, never trusted from input")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_path(cls, v):
        if isinstance(v, str | Path):
            return {"path": v}
        if isinstance(v, dict):  # a dumped config (a manifest's) carries the old hash: recompute it
            return {k: x for k, x in v.items() if k != "sha256"}
        return v

    @pydantic.model_validator(mode="after")
    def _hash(self):
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{self.path} not found; give an existing local file") from None
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self.__dict__["sha256"] = hashlib.sha256(data).hexdigest()[:16]
        return self

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

#: the longest context a task may ask for (2^24 tokens); larger values are a typo, not a study
MAX_LENGTH = 1 << 24
Length = pydantic.conint(gt=0, le=MAX_LENGTH)
Samples = pydantic.conint(gt=0, le=1_000_000)


@dataclass
class Sample:
    """One prompt with its references, in the model's own tokens.

    ``answer_ids``: the one ordered answer in tokens, for exact-match tasks
    (None otherwise). ``references``: the answer texts (one or several; the
    metric says whether order matters); when empty, the decoded ``answer_ids``.
    ``label_positions`` / ``labels``: for ``label_accuracy`` tasks, the prompt
    positions whose next token is scored and those tokens (one teacher-forced
    pass reads the argmax at every one, as multi-query recall is evaluated).
    """

    id: str
    input_ids: list[int]
    answer_ids: list[int] | None = None
    references: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    label_positions: list[int] | None = None
    labels: list[int] | None = None


@dataclass
class TrainingExample:
    """A training sequence and the positions whose next token is labelled."""

    ids: list[int]
    label_positions: list[int]  # predict ids[p + 1] from position p
    labels: list[int]


class Task:
    name: ClassVar[str]
    #: bump when the samples or training examples a config produces change (keys caches and run identity)
    version: ClassVar[str] = "1"
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    metric: ClassVar[str] = "exact_match"
    #: generation budget in tokens
    max_new_tokens: ClassVar[int] = 16
    #: generation stops at the first of these words (each must be one token of the model's tokenizer)
    stop_words: ClassVar[tuple[str, ...]] = (".",)
    #: meta keys the report groups by besides the context length
    group_by: ClassVar[tuple[str, ...]] = ()
    #: meta key with the query-to-needle distance (for distance curves), if the task has one
    distance_key: ClassVar[str | None] = None

    def __init__(self, config: TaskConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    # -- what a plugin implements -------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word the generator can emit (the reference tokenizer is built over it)."""
        raise NotImplementedError

    def cells(self) -> list[dict[str, Any]]:
        """The grid cells, each a dict of the parameters that define it.

        Default: every ``config.lengths`` (as ``context_length``), times every ``config.depths``
        when the config has depths.
        """
        lengths = getattr(self.config, "lengths", None)
        if lengths is None:
            raise NotImplementedError(f"task {self.name!r}: define cells() or give the config `lengths`")
        depths = getattr(self.config, "depths", None)
        if depths is None:
            return [{"context_length": n} for n in lengths]
        return [{"context_length": n, "depth": d} for n in lengths for d in depths]

    def samples_per_cell(self) -> int:
        """Default: ``config.samples``."""
        samples = getattr(self.config, "samples", None)
        if samples is None:
            raise NotImplementedError(f"task {self.name!r}: define samples_per_cell() or give the config `samples`")
        return samples

    def cell_samples(self, cell: dict[str, Any], tokenizer: TextTokenizer, n: int) -> list[Sample]:
        raise NotImplementedError

    def training_example(self, rng: np.random.Generator, length: int, tokenizer: TextTokenizer) -> TrainingExample:
        raise NotImplementedError(f"task {self.name!r} has no training generator")

    # -- provided -----------------------------------------------------------------------
    def samples(self, tokenizer: TextTokenizer, limit: int | None = None) -> list[Sample]:
        n = self.samples_per_cell() if limit is None else min(limit, self.samples_per_cell())
        return [s for cell in self.cells() for s in self.cell_samples(cell, tokenizer, n)]

    def describe(self) -> dict[str, Any]:
        """What the report needs to know about this task (stored in the run manifest)."""
        return {"version": self.version, "metric": self.metric, "group_by": list(self.group_by),
                "distance_key": self.distance_key, "max_new_tokens": self.max_new_tokens}

    def stop_ids(self, tokenizer: TextTokenizer) -> list[int]:
        """Token ids that end generation: each stop word as one token, plus the model's end tokens (EOS, a chat
        template's end of turn)."""
        ids = []
        for word in self.stop_words:
            piece = tokenizer.piece(word)
            if len(piece) != 1:
                raise UserError(f"task {self.name}: stop word {word!r} is {len(piece)} tokens with this tokenizer; "
                                "stop words must be single tokens")
            ids.append(piece[0])
        return ids + tokenizer.end_ids()

    def decided(self, sample: Sample, tokens: list[int], tokenizer: TextTokenizer) -> str | None:
        """Why generation of ``sample`` may stop after ``tokens`` without changing its score; None: go on.

        ``string_match_all`` / ``string_match_part`` only grow as text is added: once every reference (``part``:
        any one) is in the decoded text, the score is 1 whatever follows (``answer_found``). ``exact_match``
        needs exactly the answer tokens and then a stop: a token that departs from them is final (``mismatch``).
        """
        if self.metric == "exact_match" and sample.answer_ids is not None:
            n = len(tokens)
            return "mismatch" if n > len(sample.answer_ids) or tokens != sample.answer_ids[:n] else None
        if self.metric in ("string_match_all", "string_match_part") and sample.references:
            return "answer_found" if metrics.score_text(self.metric, tokenizer.decode(tokens), sample.references) == 1.0 \
                else None
        return None

    def shares_prefix(self) -> bool:
        """Whether prompts of one length share long prefixes (e.g. one haystack per length), so that
        ``run.prefix_reuse: auto`` computes the shared part once. Default: no."""
        return False

    def teacher_forcing(self, sample: Sample, stop_ids: list[int]) -> bool:
        """Whether one teacher-forced pass scores ``sample`` exactly as greedy generation would."""
        return (self.metric == "exact_match" and sample.answer_ids is not None and bool(stop_ids)
                and not set(sample.answer_ids) & set(stop_ids)
                and len(sample.answer_ids) + 1 <= self.max_new_tokens)

    def score(self, sample: Sample, predicted_ids: list[int], prediction: str, stopped: bool) -> float:
        """The per-sample score in [0, 1] of a generated answer (tokens before the stop, and their text)."""
        if self.metric == "label_accuracy":
            return metrics.label_accuracy(predicted_ids, sample.labels or [])
        if self.metric == "exact_match":
            if sample.answer_ids is None:
                raise ValueError(f"task {self.name}: exact_match needs answer_ids on every sample")
            return metrics.exact_match(predicted_ids, sample.answer_ids, stopped)
        return metrics.score_text(self.metric, prediction, sample.references)

    def capture_rows(self, sample: Sample) -> list[int] | None:
        """Query rows whose attention weights the task reads (``label_accuracy`` tasks only); None: none."""
        return None

    def read_capture(self, sample: Sample, weights) -> dict[str, Any]:
        """What the task makes of the captured weights (L, H, R, S) of ``capture_rows``: merged into the row's meta."""
        return {}

    @classmethod
    def report(cls, df, out: Path) -> ReportPart:
        """Task-specific report pieces: write files into ``out`` from this task's rows ``df`` (a DataFrame,
        meta flattened to ``meta.<key>`` columns); return the sections and figures for the summary and the HTML
        page. Default: none."""
        return ReportPart()

    def rng(self, *parts: Any) -> np.random.Generator:
        """A generator seeded from (seed, task, *parts) only: one cell never shifts another."""
        digest = hashlib.sha256(repr((self.seed, self.name, *parts)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def check_known(self, tokenizer: TextTokenizer, ids: list[int], what: str) -> None:
        """Refuse ids holding the tokenizer's unknown token: a word the model cannot represent."""
        unk = tokenizer.unk_id
        if unk is not None and unk in ids:
            raise UserError(f"task {self.name}: {what} contains a word the model's tokenizer cannot represent "
                            f"(it became the unknown token); use a model whose tokenizer covers the task's vocabulary")
