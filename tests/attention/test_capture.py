"""Attention capture: the recorded rows are the variant's own weights, they produce the output, in O(rows x S)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lceval.attention import build_attention
from lceval.attention.capture import Capture, capturing
from lceval.attention.core import repeat_kv
from lceval.models.reference import Architecture, ReferenceTransformer

VARIANTS = {"full": {}, "flash": {}, "sliding_window": {"window": 5},
            "sparse": {"block": 4, "local_blocks": 2, "global_blocks": 1}, "linear": {}}


class Spy:
    """Wraps an attention variant and keeps the q, k, v (and output) of every call."""

    def __init__(self, attn):
        self.attn, self.calls = attn, []

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None):
        out = self.attn(q, k, v, causal=causal, score_mod=score_mod, scale=scale)
        self.calls.append((q, k, v, score_mod, out))
        return out

    def weights(self, *a, **kw):
        return self.attn.weights(*a, **kw)


@pytest.mark.parametrize("position", ["rotary", "alibi"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_captured_rows_are_the_weights_that_make_the_output(name, position):
    if position == "alibi" and name == "linear":
        pytest.skip("linear attention cannot add ALiBi's bias (refused at config time)")
    torch.manual_seed(0)
    arch = Architecture(vocab_size=30, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, position=position, conv_kernel=0)
    spy = Spy(build_attention(name, **VARIANTS[name]))
    model = ReferenceTransformer(arch, spy).eval()
    ids = torch.randint(0, 30, (2, 23))
    rows = [0, 7, 22]
    with torch.no_grad(), capturing(model, rows) as cap:
        model.hidden(ids)
    assert sorted(cap.weights) == [0, 1, 2] and model.capture is None
    for layer, (q, k, v, mod, out) in enumerate(spy.calls):
        w = cap.weights[layer]  # (B, H, R, S)
        assert w.shape == (2, 4, 3, 23)
        torch.testing.assert_close(w, spy.attn.weights(q, k, v, causal=True, rows=rows, score_mod=mod).float())
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 3))  # normalized over the visible keys
        assert (w[:, :, 0, 1:] == 0).all()  # row 0 sees only itself (causal)
        # the captured weights are the ones the output is made of
        torch.testing.assert_close(w @ repeat_kv(v, 4), out[:, :, rows], atol=1e-5, rtol=1e-4)


def test_capture_chooses_layers_and_slices():
    arch = Architecture(vocab_size=30, d_model=32, n_layers=3, n_heads=2, position="rotary")
    model = ReferenceTransformer(arch, build_attention("flash")).eval()
    with torch.no_grad(), capturing(model, slice(10, 12), layers=[1]) as cap:
        model.hidden(torch.randint(0, 30, (1, 16)))
    assert list(cap.weights) == [1] and cap.stacked().shape == (1, 1, 2, 2, 16)
    with pytest.raises(TypeError, match="offers no attention capture"):
        with capturing(torch.nn.Linear(2, 2), [0]):
            pass
    with pytest.raises(ValueError, match="query rows must lie in"):
        Capture([99]).record(0, build_attention("full"), *(torch.randn(1, 1, 4, 8) for _ in range(3)))


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["flash", "sliding_window", "linear"])
def test_capture_memory_is_rows_times_keys_at_16k(name):
    T, rows = 16384, [100, 8000, 16383]
    arch = Architecture(vocab_size=30, d_model=32, n_layers=1, n_heads=2, position="rotary", conv_kernel=0, max_length=T)
    params = {"window": 512} if name == "sliding_window" else {}
    model = ReferenceTransformer(arch, build_attention(name, **params)).eval()
    spy = LargestTensor()
    with torch.no_grad(), capturing(model, rows) as cap, spy:
        model.hidden(torch.randint(0, 30, (1, T)))
    assert cap.weights[0].shape == (1, 2, 3, T)
    assert spy.largest <= 4 * T * 32 * 2  # O(n): activations and row weights, nowhere near T x T (2.7e8)


def test_the_memory_check_sees_a_full_matrix():
    """The same check trips when every row is captured: it would see a T x T tensor."""
    T = 2048
    arch = Architecture(vocab_size=30, d_model=32, n_layers=1, n_heads=2, position="rotary", conv_kernel=0, max_length=T)
    model = ReferenceTransformer(arch, build_attention("flash")).eval()
    spy = LargestTensor()
    with torch.no_grad(), capturing(model, slice(None)), spy:
        model.hidden(torch.randint(0, 30, (1, T)))
    assert spy.largest >= T * T > 4 * T * 32 * 2
