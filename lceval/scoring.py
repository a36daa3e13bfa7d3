"""Scoring a batch of samples: the model's answer, then the task's metric.

Samples of one batch share their prompt length. Where the task allows it
(``Task.teacher_forcing``) and the run does not ask for generation, the answer
comes from one teacher-forced pass; otherwise from greedy decoding with a KV
cache. Both give the same per-sample result where both apply (tested for every
attention variant).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from lceval.attention.capture import capturing
from lceval.diagnosis import EvidenceCapture, needle_context, span_mask
from lceval.generate import Answer, PrefixStore, greedy_generate, labelled, teacher_forced
from lceval.task import Sample, Task
from lceval.tokenizer import TextTokenizer

#: auto: teacher forcing where it is exact, else generation that stops once the score is decided;
#: generate: always generation (stopping once decided); full: generation to a stop token or the whole budget
AnswerMode = Literal["auto", "generate", "full"]


@dataclass
class Scored:
    score: float  # in [0, 1]
    prediction: str
    answer: Answer
    mode: str  # "teacher_forcing" or "generate"
    meta: dict = field(default_factory=dict)  # what the task read besides the score (merged into the row's meta)


def uses_teacher_forcing(task: Task, sample: Sample, stop_ids: list[int], mode: AnswerMode) -> bool:
    return mode == "auto" and task.teacher_forcing(sample, stop_ids)


def score_batch(model, task: Task, samples: list[Sample], tokenizer: TextTokenizer, *, device="cpu",
                mode: AnswerMode = "auto", forced: bool | None = None, capture: bool = True,
                reuse_prefix: bool = False, store: PrefixStore | None = None) -> list[Scored]:
    """Score samples of one prompt length (and, under teacher forcing, one answer length).

    ``forced``: the teacher-forcing decision the runner made when it planned the batch (``uses_teacher_forcing`` for
    every sample); None decides it here, the same way. ``capture``: for samples that declare evidence spans
    (``meta["_evidence"]``) and a model that offers the hook, attention on the evidence is read during the same
    pass (``lceval.diagnosis``) into each result's meta under ``attention``. ``reuse_prefix``: generation computes
    the prompts' common prefix once (``lceval.generate.prefill``), continuing from ``store``'s prefix when given."""
    if len({len(s.input_ids) for s in samples}) != 1:
        raise ValueError("score_batch needs samples of one prompt length")
    prompts = torch.tensor([s.input_ids for s in samples], device=device)  # (B, T)
    if task.metric == "label_accuracy":  # teacher-forced by definition: the argmax at every labelled position
        out = []
        for s, (a, extra) in zip(samples, _labelled(model, task, prompts, samples), strict=True):
            text = tokenizer.decode(a.tokens).strip()
            out.append(Scored(task.score(s, a.tokens, text, True) if a.finite else 0.0, text, a, "teacher_forcing",
                              extra))
        return out
    stop_ids = task.stop_ids(tokenizer)
    if forced is None:
        forced = all(uses_teacher_forcing(task, s, stop_ids, mode) for s in samples)
    eos = tuple(tokenizer.end_ids())
    T = prompts.shape[1]
    if forced and len({len(s.answer_ids) for s in samples}) != 1:
        raise ValueError("a teacher-forced batch needs samples of one answer length")
    rows = list(range(T - 1, T - 1 + len(samples[0].answer_ids))) if forced else [T - 1]
    with _evidence_capture(model, samples, prompts, rows, capture) as cap:
        if forced:
            answers = torch.tensor([s.answer_ids for s in samples], device=device)  # (B, A)
            got, how = teacher_forced(model, prompts, answers, stop_ids, eos_ids=eos), "teacher_forcing"
        else:
            decided = None if mode == "full" else (lambda i, tokens: task.decided(samples[i], tokens, tokenizer))
            got = greedy_generate(model, prompts, task.max_new_tokens, stop_ids, decided=decided, eos_ids=eos,
                                  reuse_prefix=reuse_prefix, store=store)
            how = "generate"
    out = []
    for i, (s, a) in enumerate(zip(samples, got, strict=True)):
        text = tokenizer.decode(a.tokens).strip()
        score = task.score(s, a.tokens, text, a.stopped) if a.finite else 0.0
        meta = {}
        if cap is not None and cap.mass:
            ev = s.meta["_evidence"]
            meta["attention"] = cap.sample_stats(i, s.input_ids, a.tokens, ev.get("needle", []), ev.get("value", []),
                                                 len(rows))
            meta["context"] = needle_context(tokenizer, s.input_ids, ev.get("needle", []))
        out.append(Scored(score, text, a, how, meta))
    return out


@contextmanager
def _evidence_capture(model, samples: list[Sample], prompts: torch.Tensor, rows: list[int], wanted: bool):
    """An ``EvidenceCapture`` on the model while the answer is produced, when every sample declares evidence and
    the model offers the capture hook; else None."""
    if not wanted or not hasattr(model, "capture") or not all("_evidence" in s.meta for s in samples):
        yield None
        return
    needle = span_mask([s.meta["_evidence"].get("needle", []) for s in samples], prompts.shape[1], prompts.device)
    with capturing(model, EvidenceCapture(needle, rows)) as cap:
        yield cap


def _labelled(model, task: Task, prompts: torch.Tensor, samples: list[Sample]) -> list[tuple[Answer, dict]]:
    """The labelled pass; for a task that reads attention (``Task.capture_rows``), one sample at a time with
    a capture of its rows, handed to ``Task.read_capture``."""
    if task.capture_rows(samples[0]) is None:
        got = labelled(model, prompts, [s.label_positions for s in samples], [s.labels for s in samples])
        return [(a, {}) for a in got]
    out = []
    for i, s in enumerate(samples):
        with capturing(model, rows=task.capture_rows(s)) as cap:
            a = labelled(model, prompts[i : i + 1], [s.label_positions], [s.labels])[0]
        out.append((a, task.read_capture(s, cap.stacked()[:, 0])))  # (L, H, R, S)
    return out
