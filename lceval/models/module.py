"""``type: module``: a research model of your own, built by a factory you name.

The factory (``factory: package.module:callable``, called with the model's
``options`` as keyword arguments) returns a ``ModuleModel``: the torch module,
its tokenizer and what lceval should report about its positions. The module
follows ``LcevalModel``, the protocol the runner itself uses for every model:

* ``hidden(ids, cache=None) -> (B, T, d)``: final hidden states; with a cache,
  ``ids`` continue the cached sequence and the cache is extended;
* ``logits_at(hidden, index) -> (B, K, V)``: logits at chosen positions only;
* ``new_cache()``: an empty cache, or ``None`` if the model keeps none (the
  runner then recomputes the whole sequence at every generated token);
* ``set_attention(attention)``: route the model's attention through an lceval
  ``Attention`` (q, k, v of shape (B, H, T, D) / (B, H_kv, S, D), already
  position-encoded; call ``attention(q, k, v, causal=True, scale=...)``);
* optionally ``capture``: an attribute the runner sets to an
  ``lceval.attention.capture.Capture`` (or ``None``); while set, each layer
  calls ``capture.record(layer, attention, q, k, v)``.

See ``tests/fixtures/tiny_module.py`` for a complete example.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from lceval.attention import Attention
from lceval.errors import ConfigError, UserError, last_line
from lceval.models.adapters import DTYPES, ModelAdapter
from lceval.tokenizer import TextTokenizer


@runtime_checkable
class LcevalModel(Protocol):
    """What the runner calls on a model (the reference model and the hf adapter follow it too)."""

    def hidden(self, ids: Tensor, cache=None) -> Tensor: ...

    def logits_at(self, hidden: Tensor, index: Tensor) -> Tensor: ...

    def new_cache(self): ...

    def set_attention(self, attention: Attention) -> None: ...


@dataclass
class ModuleModel:
    """What a factory returns."""

    model: LcevalModel
    tokenizer: TextTokenizer
    position: str = "unknown"  # reported in rows: rotary, learned, alibi, none, ...
    max_length: int | None = None  # longest input the positions cover (None: unbounded)
    n_heads: int = 1  # query heads, for memory estimates and head ablation
    n_layers: int | None = None  # attention layers (head ablation needs it and the model's set_ablation)


def load_factory(ref: str):
    """The callable named by ``package.module:callable``, or a one-line error saying what is missing."""
    mod_name, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserError(f"cannot import {mod_name!r} ({exc}); install the package or put it on PYTHONPATH") from None
    except SyntaxError as exc:
        raise UserError(f"{mod_name} has a syntax error ({exc.filename} line {exc.lineno}: {exc.msg}); fix the "
                        "module") from None
    except Exception as exc:  # the module's own code failed while importing: its error, in one line
        raise UserError(f"importing {mod_name} raised {type(exc).__name__}: {last_line(exc)}; fix the module") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UserError(f"{mod_name} has no callable {attr!r}")
    return fn


def call_factory(fn, ref: str, options: dict):
    """``fn(**options)``; options the factory does not take, or an exception it raises, become one-line errors
    (keys ``options`` and ``factory``) with the exception's last line."""
    try:
        inspect.signature(fn).bind(**options)
    except TypeError as exc:
        raise ConfigError("options", f"{ref} cannot be called with {sorted(options) or 'no options'}: {exc}; "
                          "make the options match the factory's parameters") from None
    except ValueError:  # no signature to check (a builtin): the call itself says
        pass
    try:
        return fn(**options)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as exc:
        raise ConfigError("factory", f"{ref} raised {type(exc).__name__}: {last_line(exc)}") from None


class ModuleAdapter(ModelAdapter):
    """``type: module``: ``factory: package.module:callable`` -> ``ModuleModel``."""

    name = "module"

    @classmethod
    def check_spec(cls, spec, where: str) -> None:
        """The factory imports (it is called only when the run loads the model)."""
        try:
            load_factory(spec.factory)
        except UserError as exc:
            raise ConfigError(f"{where}.factory", str(exc)) from None

    def prepare(self) -> None:
        if getattr(self, "built", None) is not None:
            return
        fn = load_factory(self.spec.factory)
        built = call_factory(fn, self.spec.factory, self.spec.options)
        if not isinstance(built, ModuleModel):
            raise UserError(f"{self.spec.factory} returned {type(built).__name__}; it must return "
                            "lceval.models.module.ModuleModel(model=..., tokenizer=...)")
        missing = [m for m in ("hidden", "logits_at", "new_cache", "set_attention")
                   if not callable(getattr(built.model, m, None))]
        if missing:
            raise UserError(f"the model from {self.spec.factory} lacks {', '.join(missing)} "
                            "(see lceval.models.module.LcevalModel)")
        if not isinstance(built.tokenizer, TextTokenizer):
            raise UserError(f"{self.spec.factory} must return an lceval.tokenizer.TextTokenizer "
                            "(TextTokenizer.from_hf(tok) wraps a transformers tokenizer)")
        self.built = built
        self.tokenizer = built.tokenizer
        self.position, self.max_length, self.n_heads = built.position, built.max_length, built.n_heads
        self.n_layers = built.n_layers
        if isinstance(built.model, nn.Module):
            built.model.eval().to(self.device)
            if self.spec.dtype != "auto":
                built.model.to(DTYPES[self.spec.dtype])
        self.source = inspect.getsourcefile(fn) or ""
        self.content_hash = hashlib.sha256(Path(self.source).read_bytes()).hexdigest()[:16] if self.source else None

    def with_attention(self, attention: Attention):
        self.built.model.set_attention(attention)
        return self.built.model

    def describe(self) -> dict:
        # the factory's source file stands for the model's identity (a changed model gives a new run id)
        return {"type": self.name, "factory": self.spec.factory, "options": self.spec.options,
                "position": self.position, "source": self.source, "sha256": self.content_hash}
