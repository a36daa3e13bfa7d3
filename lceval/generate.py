"""Getting a model's answer: greedy decoding with a KV cache, and teacher forcing.

Any model the runner scores offers this small protocol (the reference model
does; other adapters wrap theirs to match):

* ``hidden(ids, cache=None) -> (B, T, d)``: with a cache, ``ids`` continue the
  cached sequence and the cache is extended;
* ``logits_at(hidden, index) -> (B, K, V)``: logits only where needed;
* ``new_cache()``: an empty cache.

``greedy_generate`` decodes a batch of equal-length prompts and stops each one
at a stop token, at the budget, or as soon as ``decided(i, tokens)`` says its
score can no longer change (see ``Task.decided``); ``recompute=True``
runs the whole sequence again at every step instead of using the cache (the
oracle the cache is tested against). ``teacher_forced`` scores one ordered
answer in a single pass; it equals greedy decoding's exact match followed by
a stop token (see ``lceval.task``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

#: why generation ended: the model's end token, a task's stop word, the score decided early (every reference
#: found; a token that can never be exact), or the token budget
StopReason = Literal["eos", "stop_word", "answer_found", "mismatch", "budget"]


@dataclass
class Answer:
    """The model's answer to one prompt."""

    tokens: list[int]  # generated tokens before the stop token (greedy-consistent prefix under teacher forcing)
    stopped: bool  # a stop token ended it (False: the budget ran out)
    finite: bool  # every logit it was read from was finite
    logprob: float | None = None  # teacher forcing: log-probability of the reference answer
    exact: bool | None = None  # teacher forcing: answer tokens and then a stop token
    stop_reason: StopReason | None = None  # why generation ended (None: a labelled pass)
    prefill_tokens: int | None = None  # prompt tokens this answer computed (less than the prompt: a shared prefix)


@torch.no_grad()
def greedy_generate(model, prompts: torch.Tensor, max_new_tokens: int, stop_ids: list[int],
                    recompute: bool = False, decided: Callable[[int, list[int]], StopReason | None] | None = None,
                    eos_ids: tuple[int, ...] = (), reuse_prefix: bool = False,
                    store: PrefixStore | None = None) -> list[Answer]:
    """Greedy decoding of prompts (B, T) until each emits a stop id, ``max_new_tokens`` are out, or
    ``decided(i, tokens)`` returns a reason to stop sample i. ``eos_ids``: the stop ids that are the
    model's own end tokens (reported as ``eos``; other stop ids as ``stop_word``). ``reuse_prefix``: the
    prompts' common prefix is computed once (``prefill``), continuing from ``store``'s when given."""
    B = prompts.shape[0]
    device = prompts.device
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    cache = None if recompute else model.new_cache()
    seq = prompts
    if cache is None:
        h = model.hidden(prompts)
        shared = stored = 0
    else:
        h, shared, stored = prefill(model, prompts, cache, reuse_prefix, store)
    logits = model.logits_at(h, torch.full((B, 1), h.shape[1] - 1, device=device))[:, 0]  # (B, V)
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    finite = torch.ones(B, dtype=torch.bool, device=device)
    reasons: list[StopReason] = ["budget"] * B
    for step in range(max_new_tokens):
        finite &= torch.isfinite(logits).all(-1) | done
        nxt = logits.argmax(-1)  # (B,)
        is_stop = torch.isin(nxt, stop)
        for i in torch.nonzero(~done & is_stop).flatten().tolist():
            reasons[i] = "eos" if int(nxt[i]) in eos_ids else "stop_word"
        stopped |= ~done & is_stop
        for i in torch.nonzero(~done & ~is_stop).flatten().tolist():
            out[i].append(int(nxt[i]))
            why = decided(i, out[i]) if decided is not None else None
            if why is not None:
                reasons[i] = why
                is_stop[i] = True  # done, though no stop token was emitted
        done |= is_stop
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if cache is not None:
            h = model.hidden(nxt[:, None], cache=cache)
            logits = model.logits_at(h, torch.zeros(B, 1, dtype=torch.long, device=device))[:, 0]
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            h = model.hidden(seq)
            logits = model.logits_at(h, torch.full((B, 1), seq.shape[1] - 1, device=device))[:, 0]
    T = prompts.shape[1]
    # the first prompt carries the part of the shared prefix this batch computed
    computed = [T - shared + (shared - stored if i == 0 else 0) for i in range(B)]
    return [Answer(o, bool(s), bool(f), stop_reason=r, prefill_tokens=c)
            for o, s, f, r, c in zip(out, stopped.tolist(), finite.tolist(), reasons, computed, strict=True)]


#: a common prefix shorter than this is recomputed with each prompt (an extra call costs more than it saves)
MIN_SHARED = 16
#: what a cache offers for prefix reuse (``KVCache``, ``SpareCache``); a user module's cache without these
#: runs each prompt whole
PREFIX_CACHE = ("take_prefix", "batch_repeat_interleave", "nbytes")


def common_prefix(prompts: torch.Tensor) -> int:
    """Length of the longest prefix every row of prompts (B, T) shares."""
    differs = (prompts != prompts[:1]).any(0)  # (T,)
    return int(differs.int().argmax()) if bool(differs.any()) else prompts.shape[1]


class PrefixStore:
    """The longest prompt prefix computed so far, one row of a model's cache, kept from batch to batch.

    The runner plans a unit's prompts in text order, so neighbouring batches share the haystack up to their
    needles: each batch continues from the longest part of the stored prefix its own shared prefix agrees with,
    and computes only the rest (``prefill``). The store holds at most ``max_bytes`` (a copy of one row's keys and
    values): of a longer prefix, the leading part that fits. Hold one store per model, attention and ablation: the
    cached keys are theirs."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.ids: torch.Tensor | None = None  # (P,)
        self.cache = None  # one row, the first P positions

    def match(self, ids: torch.Tensor) -> int:
        """How many leading tokens of ``ids`` (N,) the stored prefix holds."""
        if self.ids is None:
            return 0
        n = min(len(self.ids), len(ids))
        return common_prefix(torch.stack([self.ids[:n], ids[:n]]))

    def offer(self, model, ids: torch.Tensor, cache) -> None:
        """Keep a copy of ``cache`` (one row that holds exactly ``ids``) if it is longer than the stored prefix (a
        later batch is nearer in text order). Past the byte limit, its leading positions that fit are kept (keys
        and values grow with the length); a cache that cannot be cut (a recurrent state) leaves the stored prefix
        as it is, which later batches of the haystack still share."""
        size = cache.nbytes()
        n = len(ids) if size <= self.max_bytes else len(ids) * self.max_bytes // size
        if n < MIN_SHARED or (self.ids is not None and (n < len(self.ids) or self.match(ids[:n]) == n)):
            return  # too little to keep, shorter than the stored prefix, or the same prefix again
        copy = model.new_cache()
        if copy.take_prefix(cache, n, room=False):  # a kept copy is read, never appended to
            self.ids, self.cache = ids[:n].clone(), copy


def prefill(model, prompts: torch.Tensor, cache, reuse_prefix: bool = False,
            store: PrefixStore | None = None) -> tuple[torch.Tensor, int, int]:
    """Run prompts (B, T) into an empty cache; returns the hidden states of the last computed chunk (its last
    position is the prompt's last token), the shared prefix length (0: none reused) and how much of it came from
    ``store`` (computed by an earlier batch).

    With ``reuse_prefix``, the longest prefix all prompts share (at least ``MIN_SHARED`` tokens, and never the
    last token) is computed once, for one row, handed to every row of the cache (``batch_repeat_interleave``), and
    the rest continues from it: a chunked prefill, the same computation as the whole prompt's (rotary offsets,
    windows, block layouts and linear state all continue from the cache). With a ``store``, that one row starts
    from the part of the stored prefix it agrees with (copied: the store is not changed), and is offered to the
    store when computed; a batch of one prompt shares all of it but the last token. An attention capture skips
    the prefix (its rows lie in the rest) and reads its rows shifted by the prefix length."""
    B, T = prompts.shape
    reuse_prefix = reuse_prefix and all(hasattr(cache, m) for m in PREFIX_CACHE)  # a module's own cache may not
    shared = min(common_prefix(prompts), T - 1) if reuse_prefix and (B > 1 or store is not None) else 0
    start = store.match(prompts[0, :shared]) if store is not None else 0
    if start < MIN_SHARED or not cache.take_prefix(store.cache, start):
        start = 0
    if shared - start < MIN_SHARED and start == 0:
        return model.hidden(prompts, cache=cache), 0, 0
    capture = getattr(model, "capture", None)
    if capture is not None:
        model.capture = None
    try:
        if shared > start:
            model.hidden(prompts[:1, start:shared], cache=cache)
    finally:
        if capture is not None:
            model.capture = capture
    if store is not None:
        store.offer(model, prompts[0, :shared], cache)
    if capture is not None:
        capture.shift_rows(shared)
    if B > 1:
        cache.batch_repeat_interleave(B)
    return model.hidden(prompts[:, shared:], cache=cache), shared, start


@torch.no_grad()
def teacher_forced(model, prompts: torch.Tensor, answers: torch.Tensor, stop_ids: list[int],
                   eos_ids: tuple[int, ...] = ()) -> list[Answer]:
    """One pass over prompt + answer (B, T + A): exact when the argmax is each answer token, then a stop id.

    The stop reason is what greedy decoding with early stopping would record: the stop token after an exact
    answer (``eos`` or ``stop_word``), a stop token where the answer went on (also a stop), else ``mismatch``.
    """
    B, T = prompts.shape
    A = answers.shape[1]
    ids = torch.cat([prompts, answers], dim=1)  # (B, T + A)
    index = torch.arange(T - 1, T + A, device=prompts.device).expand(B, A + 1)  # (B, A + 1)
    logits = model.logits_at(model.hidden(ids), index).float()  # (B, A + 1, V)
    pred = logits.argmax(-1)  # (B, A + 1)
    logp = torch.log_softmax(logits[:, :A], dim=-1).gather(-1, answers[..., None]).squeeze(-1).sum(-1)  # (B,)
    finite = torch.isfinite(logits).all(dim=(1, 2))
    stop = torch.tensor(sorted(set(stop_ids)), device=prompts.device)
    match = pred[:, :A] == answers  # (B, A)
    exact = match.all(-1) & torch.isin(pred[:, A], stop) & finite
    result = []
    for i in range(B):
        wrong = torch.nonzero(~match[i]).flatten()
        w = int(wrong[0]) if len(wrong) else A  # greedy decoding would have produced exactly this much
        stopped = bool(torch.isin(pred[i, w], stop))
        tokens = pred[i, : w if stopped else w + 1].tolist()
        reason = ("eos" if int(pred[i, w]) in eos_ids else "stop_word") if stopped else "mismatch"
        result.append(Answer(tokens, stopped, bool(finite[i]), float(logp[i]), bool(exact[i]), reason))
    return result


@torch.no_grad()
def labelled(model, prompts: torch.Tensor, positions: list[list[int]], labels: list[list[int]]) -> list[Answer]:
    """One pass over prompts (B, T): the argmax at each sample's labelled positions (``label_accuracy`` tasks).

    ``Answer.tokens`` are the predicted tokens, in position order; ``exact``: all equal their labels.
    """
    B = prompts.shape[0]
    K = max(1, max(len(p) for p in positions))
    index = torch.tensor([p + [p[-1] if p else 0] * (K - len(p)) for p in positions], device=prompts.device)
    logits = model.logits_at(model.hidden(prompts), index).float()  # (B, K, V)
    pred = logits.argmax(-1).tolist()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i in range(B):
        n = len(positions[i])
        finite = bool(torch.isfinite(logits[i, :n]).all())
        lp = float(sum(logp[i, k, labels[i][k]] for k in range(n))) if n else 0.0
        out.append(Answer(pred[i][:n], stopped=True, finite=finite, logprob=lp, exact=pred[i][:n] == labels[i]))
    return out
