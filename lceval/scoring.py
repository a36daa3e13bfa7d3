"""Teacher-forced greedy exact match.

One forward pass over prompt + answer[:-1]; the sample is correct when the
argmax at every answer position is the answer token. That is exactly what
greedy decoding would score, at the cost of one pass instead of one per answer
token. The answer's log-probability is recorded too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lceval.task import Sample


@dataclass
class Score:
    correct: bool
    answer_logprob: float
    predicted: list[int]
    finite: bool


def score_batch(model, samples: list[Sample], device="cpu") -> list[Score]:
    """Score samples whose prompts have equal length and answers equal token count."""
    lengths = {len(s.input_ids) for s in samples}
    answers = {len(s.answer_ids) for s in samples}
    if len(lengths) != 1 or len(answers) != 1:
        raise ValueError("score_batch needs samples of one prompt length and one answer length")
    T, A = lengths.pop(), answers.pop()
    ids = torch.tensor([s.input_ids + s.answer_ids[:-1] for s in samples], device=device)  # (B, T + A - 1)
    answer = torch.tensor([s.answer_ids for s in samples], device=device)  # (B, A)
    index = torch.arange(T - 1, T - 1 + A, device=device).expand(len(samples), A)  # (B, A)
    logits = model.logits_at(model.hidden(ids), index).float()  # (B, A, V)
    logp = torch.log_softmax(logits, dim=-1)
    pred = logits.argmax(-1)  # (B, A)
    lp = logp.gather(-1, answer[..., None]).squeeze(-1).sum(-1)  # (B,)
    finite = torch.isfinite(logits).all(dim=(1, 2))
    correct = (pred == answer).all(-1) & finite
    return [
        Score(bool(c), float(x), p.tolist(), bool(f))
        for c, x, p, f in zip(correct.tolist(), lp.tolist(), pred, finite.tolist(), strict=True)
    ]


@torch.no_grad()
def greedy_decode(model, prompt: list[int], n_tokens: int, device="cpu") -> list[int]:
    """Plain greedy generation (one pass per token); the reference for ``score_batch``."""
    ids = list(prompt)
    for _ in range(n_tokens):
        x = torch.tensor([ids], device=device)
        nxt = int(model(x)[0, -1].argmax())
        ids.append(nxt)
    return ids[len(prompt):]
