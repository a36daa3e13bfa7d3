"""Greedy decoding with a KV cache equals recomputation; teacher forcing equals generation.

For every attention variant and every position encoding, with and without the token shift.
"""

from __future__ import annotations

import pytest
import torch

from lceval.attention import build_attention
from lceval.generate import greedy_generate, teacher_forced
from lceval.models.reference import Architecture, ReferenceTransformer

VARIANTS = {
    "full": {},
    "flash": {},
    "sliding_window": {"window": 6},
    "sparse": {"block": 4, "local_blocks": 2, "global_blocks": 1},
    "linear": {"chunk": 8},
}
POSITIONS = ["none", "sinusoidal", "learned", "rotary", "alibi"]
V = 50


def tiny(position: str, attention: str, conv: int, seed: int = 0) -> ReferenceTransformer:
    torch.manual_seed(seed)
    arch = Architecture(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, position=position,
                        conv_kernel=conv, max_length=256)
    model = ReferenceTransformer(arch, build_attention(attention, **VARIANTS[attention])).eval()
    with torch.no_grad():  # larger weights than the init make argmax decisions less tie-prone
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    return model


def cases():
    for pos in POSITIONS:
        for att in VARIANTS:
            if pos == "alibi" and att == "linear":
                continue  # refused at config time: linear attention cannot add a score bias
            yield pytest.param(pos, att, id=f"{pos}-{att}")


@pytest.mark.parametrize("conv", [0, 3], ids=["conv0", "conv3"])
@pytest.mark.parametrize("position,attention", list(cases()))
def test_cached_decoding_equals_recomputation(position, attention, conv):
    model = tiny(position, attention, conv)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, V, (3, 29), generator=g)
    cached = greedy_generate(model, prompts, 12, stop_ids=[])
    again = greedy_generate(model, prompts, 12, stop_ids=[], recompute=True)
    assert [a.tokens for a in cached] == [a.tokens for a in again]
    assert all(len(a.tokens) == 12 for a in cached)
    assert len({tuple(a.tokens) for a in cached}) > 1  # the prompts lead to different continuations


@pytest.mark.parametrize("position,attention", list(cases()))
def test_teacher_forcing_equals_generation(position, attention):
    model = tiny(position, attention, conv=0, seed=3)
    g = torch.Generator().manual_seed(2)
    outcomes = []
    for i in range(80):
        if len(outcomes) >= 12 and True in outcomes and False in outcomes:
            break
        prompt = torch.randint(0, V, (1, 17), generator=g)
        free = greedy_generate(model, prompt, 4, stop_ids=[])[0].tokens  # 3 answer tokens + what follows
        answer, stop = list(free[:3]), [free[3]]
        if i % 4 == 1:
            answer[-1] = (answer[-1] + 1) % V  # last token wrong
        elif i % 4 == 2:
            answer[0] = (answer[0] + 1) % V  # first wrong: later tokens are teacher-forced
        elif i % 4 == 3:
            stop = [(free[3] + 1) % V]  # right answer, but no stop after it
        if set(answer) & set(stop) or stop[0] in free[:3]:
            continue  # not a teacher-forcing case (the answer holds a stop token)
        tf = teacher_forced(model, prompt, torch.tensor([answer]), stop)[0]
        gen = greedy_generate(model, prompt, len(answer) + 1, stop)[0]
        assert tf.exact == (gen.tokens == answer and gen.stopped)
        if not tf.exact:  # the prediction recorded under teacher forcing is what greedy decoding produced
            assert gen.tokens[: len(tf.tokens)] == tf.tokens
        outcomes.append(tf.exact)
    assert True in outcomes and False in outcomes


def test_teacher_forced_logprob_is_the_answers_logprob():
    model = tiny("rotary", "full", conv=3)
    prompt = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(4))
    answer = [7, 8, 9]
    tf = teacher_forced(model, prompt, torch.tensor([answer]), [1])[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.cat([prompt, torch.tensor([answer])], 1))[0], -1)
    want = sum(float(logp[19 + j, t]) for j, t in enumerate(answer))
    assert abs(tf.logprob - want) < 1e-4


def test_generation_stops_per_sample():
    model = tiny("rotary", "flash", conv=0)
    prompts = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(5))
    free = greedy_generate(model, prompts, 6, stop_ids=[])
    stop = free[0].tokens[2]
    got = greedy_generate(model, prompts, 6, stop_ids=[stop])
    for f, a in zip(free, got, strict=True):
        if stop in f.tokens:
            assert a.stopped and a.tokens == f.tokens[: f.tokens.index(stop)]
        else:
            assert not a.stopped and a.tokens == f.tokens
    assert got[0].stopped and got[0].tokens == free[0].tokens[: free[0].tokens.index(stop)]


@pytest.mark.parametrize("position", ["rotary", "learned", "alibi"])
@pytest.mark.parametrize("conv", [0, 3])
def test_long_evaluation_runs_in_row_blocks_and_gives_the_same_hidden_states(monkeypatch, position, conv):
    """Without gradients, sequences longer than EVAL_ROWS / batch run everything but the attention call row block
    by row block (norms, convolution, projections, rotary, MLP); the hidden states are those of the one-shot
    forward that training runs, and a KV-cache prefill split across calls continues them exactly."""
    import lceval.models.reference as reference

    model = tiny(position, "flash", conv)
    ids = torch.randint(0, V, (2, 101), generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(reference, "EVAL_ROWS", 32)  # 2 sequences: 16 positions per block
    calls = []
    hooks = [model.blocks[0].mlp.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[1])),
             model.blocks[1].attn.q.register_forward_hook(lambda mod, inp, out: calls.append(-inp[0].shape[1]))]
    with torch.no_grad():
        blocked = model.hidden(ids)
    assert calls == [16] * 6 + [5] + [-16] * 6 + [-5]  # 101 positions in blocks of 16
    calls.clear()
    whole = model.hidden(ids)  # gradients on: the training path, one call each
    assert calls == [101, -101]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(blocked, whole.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # a prefill of 70 positions (blocked) continued by 31 more: the convolution's tail and
        cache = model.new_cache()  # the rotary offset carry across calls and blocks
        first, rest = model.hidden(ids[:, :70], cache), model.hidden(ids[:, 70:], cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [0, 3], ids=["conv0", "conv3"])
@pytest.mark.parametrize("position,attention", list(cases()))
def test_a_shared_prefix_computed_once_gives_the_same_generation(position, attention, conv):
    """Prompts that share 40 of their 61 tokens (then differ, as needles at different depths do): the prefix
    computed once for one row and handed to the batch (chunked prefill from the cache) gives the same hidden
    states, in float64, as each prompt run whole, and the same generation; it computes fewer prompt tokens."""
    from lceval.attention.cache import KVCache
    from lceval.generate import prefill

    model = tiny(position, attention, conv).double()
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, V, (3, 61), generator=g)
    prompts[1:, :40] = prompts[0, :40]
    prompts[2, 40] = (prompts[1, 40] + 1) % V  # rows 1 and 2 part at token 40 too
    n = len(model.blocks)
    whole = model.hidden(prompts, cache=KVCache.empty(n))[:, -1]
    cache = KVCache.empty(n)
    h, shared, stored = prefill(model, prompts, cache, reuse_prefix=True)
    assert shared == 40 and stored == 0 and h.shape[1] == 21 and cache.length == 61
    torch.testing.assert_close(h[:, -1], whole, rtol=1e-10, atol=1e-10)
    plain = greedy_generate(model, prompts, 10, stop_ids=[])
    reused = greedy_generate(model, prompts, 10, stop_ids=[], reuse_prefix=True)
    assert [a.tokens for a in reused] == [a.tokens for a in plain]
    assert [a.prefill_tokens for a in reused] == [61, 21, 21] and {a.prefill_tokens for a in plain} == {61}


@pytest.mark.parametrize("conv", [0, 3], ids=["conv0", "conv3"])
@pytest.mark.parametrize("position,attention", list(cases()))
def test_a_prefix_kept_between_batches_gives_the_same_generation(position, attention, conv):
    """Three batches of one haystack, needles at different depths (the runner's units in text order), with a
    PrefixStore: each batch continues from the stored prefix where it agrees, and its hidden states (float64)
    and generation equal each prompt run whole. A cache with keys for every position is cut to any stored
    prefix; a recurrent state or a convolution's tail only continues the whole stored prefix."""
    from lceval.attention.cache import KVCache
    from lceval.generate import PrefixStore, prefill

    model = tiny(position, attention, conv).double()
    g = torch.Generator().manual_seed(4)
    hay = torch.randint(0, V, (61,), generator=g)

    def batch(depth: int, n: int):  # n prompts of the haystack, each parting from it at ``depth``
        out = hay.repeat(n, 1)
        out[:, depth:] = torch.randint(0, V, (n, 61 - depth), generator=g)
        return out

    croppable = attention != "linear" and conv == 0
    store = PrefixStore(max_bytes=1 << 30)
    n = len(model.blocks)
    expected = [([61, 21], 0, 40), ([61 - 40, 11], 40, 50),  # the second extends the stored 40 to 50
                ([61 - 30] if croppable else [61], 30 if croppable else 0, 60)]  # one prompt: shares 60 with itself
    for prompts, (computed, stored, kept) in zip([batch(40, 2), batch(50, 2), batch(30, 1)], expected, strict=True):
        whole = model.hidden(prompts, cache=KVCache.empty(n))[:, -1]
        probe = PrefixStore(1 << 30)  # the same start, without touching the store under test
        probe.ids, probe.cache = store.ids, store.cache
        cache = KVCache.empty(n)
        h, _, got = prefill(model, prompts, cache, reuse_prefix=True, store=probe)
        assert got == stored and cache.length == 61
        torch.testing.assert_close(h[:, -1], whole, rtol=1e-10, atol=1e-10)
        plain = greedy_generate(model, prompts, 8, stop_ids=[])
        reused = greedy_generate(model, prompts, 8, stop_ids=[], reuse_prefix=True, store=store)
        assert [a.tokens for a in reused] == [a.tokens for a in plain]
        assert [a.prefill_tokens for a in reused] == computed
        assert len(store.ids) == kept and torch.equal(store.ids, prompts[0, :kept])
        assert store.cache.length == kept  # a copy: the batch's cache went on to 61 positions and more
        assert all(x.untyped_storage().nbytes() == x.numel() * x.element_size()  # no spare room kept
                   for layer in store.cache.layers for x in (layer.k, layer.v) if x is not None)
    small = PrefixStore(max_bytes=16)  # not even MIN_SHARED positions fit: nothing is kept
    greedy_generate(model, batch(40, 2), 2, stop_ids=[], reuse_prefix=True, store=small)
    assert small.ids is None
    if position != "rotary":
        return  # the byte limit is the store's own: every variant and both cache kinds once suffice
    # a limit that holds 25 positions of a 40-token prefix: its first 25 are kept where keys can be cut (a
    # recurrent state cannot: nothing), and the next batch continues from them with the same generation
    per_token = store.cache.nbytes() // len(store.ids)
    part = PrefixStore(max_bytes=25 * per_token + per_token // 2)
    first, second = batch(40, 2), batch(50, 2)
    greedy_generate(model, first, 2, stop_ids=[], reuse_prefix=True, store=part)
    if croppable:
        assert torch.equal(part.ids, first[0, :25]) and part.cache.length == 25
        assert part.cache.nbytes() <= part.max_bytes
    else:
        assert part.ids is None
    reused = greedy_generate(model, second, 8, stop_ids=[], reuse_prefix=True, store=part)
    assert [a.tokens for a in reused] == [a.tokens for a in greedy_generate(model, second, 8, stop_ids=[])]
    assert [a.prefill_tokens for a in reused] == ([61 - 25, 11] if croppable else [61, 11])
    assert (len(part.ids) if croppable else part.ids) == (25 if croppable else None)  # 50 do not fit either


def test_a_cache_without_the_prefix_methods_runs_each_prompt_whole():
    """A user module's own cache type need not offer ``take_prefix``, ``batch_repeat_interleave`` and ``nbytes``:
    with prefix reuse asked for, its prompts run whole (the same generation) instead of failing the unit."""
    from lceval.attention.cache import KVCache
    from lceval.generate import PREFIX_CACHE, PrefixStore

    class OwnCache:  # keys and values as lceval keeps them, behind a type of the module's own
        def __init__(self, inner):
            object.__setattr__(self, "inner", inner)

        def __getattr__(self, name):
            if name in PREFIX_CACHE:
                raise AttributeError(name)
            return getattr(self.inner, name)

        def __setattr__(self, name, value):
            setattr(self.inner, name, value)

    model = tiny("rotary", "flash", 0)
    plain = model.new_cache
    prompts = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(5)).repeat(2, 1)
    prompts[1, 30:] = (prompts[1, 30:] + 1) % V  # the two share 30 tokens
    want = greedy_generate(model, prompts, 6, stop_ids=[], reuse_prefix=True)
    assert [a.prefill_tokens for a in want] == [40, 10]
    model.new_cache = lambda: OwnCache(KVCache.empty(len(model.blocks)))
    assert not hasattr(model.new_cache(), "take_prefix") and plain is not model.new_cache
    store = PrefixStore(1 << 30)
    got = greedy_generate(model, prompts, 6, stop_ids=[], reuse_prefix=True, store=store)
    assert [a.tokens for a in got] == [a.tokens for a in want]
    assert [a.prefill_tokens for a in got] == [40, 40] and store.ids is None


def test_no_prefix_is_reused_when_the_prompts_share_too_little():
    from lceval.generate import MIN_SHARED, common_prefix

    model = tiny("rotary", "flash", 0)
    prompts = torch.randint(0, V, (2, 30), generator=torch.Generator().manual_seed(3))
    prompts[1, : MIN_SHARED - 1] = prompts[0, : MIN_SHARED - 1]
    prompts[1, MIN_SHARED - 1] = (prompts[0, MIN_SHARED - 1] + 1) % V
    assert common_prefix(prompts) == MIN_SHARED - 1
    got = greedy_generate(model, prompts, 4, stop_ids=[], reuse_prefix=True)
    assert [a.prefill_tokens for a in got] == [30, 30]
    same = prompts[:1].repeat(2, 1)  # identical prompts: all but the last token is shared
    assert [a.prefill_tokens for a in greedy_generate(model, same, 4, stop_ids=[], reuse_prefix=True)] == [30, 1]


def test_the_layer_cache_appends_in_place_and_holds_every_key_in_order(monkeypatch):
    """A decoding step writes its keys after the cached ones in one buffer (no copy of the whole cache per token);
    past the spare room, or after the cache was repeated over a batch, a new buffer holds the same keys."""
    import lceval.attention.cache as cache_mod

    monkeypatch.setattr(cache_mod, "SPARE_MIN", 4)
    cache = cache_mod.KVCache.empty(1)
    layer, want_k, want_v = cache.layers[0], [], []
    g = torch.Generator().manual_seed(0)

    def step(t, b=1):
        k, v = torch.randn(b, 2, t, 8, generator=g), torch.randn(b, 2, t, 8, generator=g)
        want_k.append(k)
        want_v.append(v)
        got_k, got_v = layer.append(k, v)
        assert torch.equal(got_k, torch.cat(want_k, 2)) and torch.equal(got_v, torch.cat(want_v, 2))

    step(10)  # room for 4 more
    buffer = layer.k.data_ptr()
    for _ in range(4):
        step(1)
        assert layer.k.data_ptr() == buffer
    step(1)
    assert layer.k.data_ptr() != buffer  # full: reallocated, keys carried over
    cache.batch_repeat_interleave(3)
    want_k[:], want_v[:] = [layer.k.clone()], [layer.v.clone()]
    for _ in range(3):
        step(1, b=3)
