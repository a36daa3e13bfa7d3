"""The result row: one per sample and pairing, the only record a run writes.

A ``Row`` is built by the runner, validated and serialised by the results
store (which stamps the run id), and read back by the report, always through
this module. ``Row.upgrade`` takes a line of ``results.jsonl`` written by any
lceval (rows before scores, before run ids...) and returns the current Row, or
``None`` if the line is not a row (the store quarantines it).

Fields, in the order they are written:

* ``run_id``: hash of everything that decides the results (``runner.identity``);
  stamped by the store. ``None`` only in rows of an lceval before run ids.
* ``task``, ``sample_id``, ``pairing``: the row's key (``Row.key``). A later row
  with the same key supersedes an earlier one (``--retry-failed``).
* ``model``, ``attention``, ``attention_params``, ``position``: what scored it:
  the config's model name, the variant's registered name and its parameters,
  and the position encoding the model reports.
* ``context_length``: the prompt's length in the model's tokens.
* ``meta``: the task's own fields (depth, needle offsets, distance...) plus the
  scorer's; never the row's own fields.
* ``metric``, ``references``, ``prediction``, ``score``, ``correct``: how it was
  judged, against what, the model's answer text, the score in [0, 1] (0 when the
  row did not score), and ``score >= 1``.
* ``diagnosis``: for tasks that declare evidence, why the answer was right or
  wrong: ``found``, ``attended_but_wrong``, ``not_attended`` or ``out_of_reach``
  (``lceval.diagnosis``); the per-head numbers are in ``meta.attention``.
* ``answer_mode``: ``teacher_forcing`` or ``generate``; ``answer_logprob``: the
  answer's log-probability under teacher forcing; ``stop_reason``: why
  generation stopped (``eos``, ``stop_word``, ``decided``, ``budget``...);
  ``prefill_tokens``: prompt tokens computed; ``impl``: the kernel that ran.
* ``status``: a ``Status``; ``message``: why, when it is not ``ok``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import pydantic

#: the row format written by this lceval (bumped when a field's meaning changes)
VERSION = 2


class Status(str, Enum):
    """What happened to a sample. ``ran``: it was scored (a failure scores 0); ``failed``: it ran and broke,
    so ``--retry-failed`` scores it again. The two others were never run: the model's positions do not
    reach the length, or the variant's scores would not fit the memory budget."""

    OK = "ok"
    NONFINITE = "nonfinite"
    OOM = "oom"
    ERROR = "error"
    UNSUPPORTED_LENGTH = "unsupported_length"
    SKIPPED_MEMORY = "skipped_memory"

    @property
    def ran(self) -> bool:
        return self in (Status.OK, Status.NONFINITE, Status.OOM, Status.ERROR)

    @property
    def failed(self) -> bool:
        return self in (Status.NONFINITE, Status.OOM, Status.ERROR)


#: status values as plain strings, for tables
RAN = frozenset(s.value for s in Status if s.ran)
FAILED = frozenset(s.value for s in Status if s.failed)
#: the fields that make a line of results.jsonl a row at all
REQUIRED = ("pairing", "task", "sample_id", "status")
#: the values of ``Row.diagnosis`` (``lceval.diagnosis`` decides them)
DIAGNOSES = ("found", "attended_but_wrong", "not_attended", "out_of_reach")


class Row(pydantic.BaseModel):
    """One sample scored by one pairing (fields: see the module docstring)."""

    model_config = pydantic.ConfigDict(extra="allow", use_enum_values=True, validate_assignment=False)

    run_id: str | None = None
    task: str
    sample_id: str
    pairing: str
    model: str | None = None
    attention: str | None = None
    attention_params: dict[str, Any] | None = None
    position: str | None = None
    context_length: int | None = None
    meta: dict[str, Any] = pydantic.Field(default_factory=dict)
    metric: str | None = None
    references: list[Any] | None = None
    prediction: str | None = None
    score: float = 0.0
    correct: bool = False
    diagnosis: str | None = None
    answer_mode: str | None = None
    answer_logprob: float | None = None
    stop_reason: str | None = None
    prefill_tokens: int | None = None
    impl: str | None = None
    status: Status
    message: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return key_of(self.__dict__)

    @classmethod
    def upgrade(cls, raw: Any) -> dict | None:
        """A line of any lceval's results.jsonl as a current row (a plain dict, fields in order), or None if it
        is not a row. Older rows: a score from ``correct`` (before scores), no run id (before run ids)."""
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in REQUIRED):
            return None
        if "score" not in raw and "correct" in raw:  # rows written before scores existed
            raw = {**raw, "score": float(bool(raw["correct"]))}
        try:
            return cls.model_validate(raw).as_dict()
        except pydantic.ValidationError:
            return None

    def as_dict(self) -> dict:
        """The row as written: every field in order, then any extra ones a newer lceval wrote."""
        return self.model_dump(mode="python")


def key_of(row: dict) -> tuple[str, str, str]:
    """The key of a row as a dict: (pairing, task, sample_id)."""
    return row["pairing"], row["task"], row["sample_id"]
