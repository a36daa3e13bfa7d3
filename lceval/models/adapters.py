"""Model adapters: how a configured model becomes something the runner can score.

An adapter gives the runner a tokenizer and, for an attention variant, a
module with ``hidden(ids)`` and ``logits_at(hidden, index)`` that routes its
attention through that lceval backend.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lceval.attention import Attention
from lceval.config import ModelSpec
from lceval.errors import ConfigError, UserError
from lceval.models.checkpoint import is_complete, load_checkpoint, read_card, zoo_path
from lceval.tokenizer import TextTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hash_files(files) -> str:
    """sha256 over each file's name and bytes, in the order given (16 hex digits)."""
    h = hashlib.sha256()
    for file in files:
        h.update(Path(file).name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 over a checkpoint's weights, card and tokenizer (what a resumed run must find unchanged)."""
    from lceval.models.checkpoint import CARD, TOKENIZER, WEIGHTS

    return hash_files(Path(path) / name for name in (WEIGHTS, CARD, TOKENIZER))


class ModelAdapter:
    name: ClassVar[str]

    def __init__(self, spec: ModelSpec, *, device: str = "cpu", progress: bool = True):
        self.spec = spec
        self.device = device
        self.progress = progress

    tokenizer: TextTokenizer
    #: longest input the model can represent (None: unbounded)
    max_length: int | None = None
    #: query heads, for memory estimates and head ablation
    n_heads: int = 1
    #: attention layers (None: unknown; head ablation needs it)
    n_layers: int | None = None
    position: str = "unknown"

    # -- what the model type knows about a spec, before anything is loaded (called while resolving a config) --
    @classmethod
    def check_spec(cls, spec: ModelSpec, where: str) -> None:
        """Refuse a spec whose files cannot work (a ``ConfigError`` under ``where``); may normalise paths."""

    @classmethod
    def position_of(cls, spec: ModelSpec) -> str | None:
        """The position encoding the model uses, if known without loading it (checks pairings against it)."""
        return None

    @classmethod
    def preflight_tokenizer(cls, spec: ModelSpec, where: str) -> TextTokenizer | None:
        """A tokenizer to try the tasks with before the run starts (None: the model's own, found at load)."""
        return None

    def prepare(self) -> None:
        """Load (or build) the model once; called before the first pairing uses it."""

    def with_attention(self, attention: Attention) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": self.name}


class ReferenceAdapter(ModelAdapter):
    """The built-in reference transformer, from a checkpoint (a recipe is trained into one first: ``lceval.train``)."""

    name = "reference"

    @classmethod
    def check_spec(cls, spec: ModelSpec, where: str) -> None:
        if spec.checkpoint is None:
            return  # a recipe: checked by the resolver, trained before the run (lceval.train.ensure_trained)
        try:
            spec.checkpoint = zoo_path(spec.checkpoint)
        except UserError as exc:
            raise ConfigError(f"{where}.checkpoint", str(exc)) from None
        if not is_complete(spec.checkpoint):
            raise ConfigError(f"{where}.checkpoint", f"no reference checkpoint at {spec.checkpoint} (needs "
                              "model.safetensors, card.json, tokenizer.json); train one with `lceval train`")

    @classmethod
    def position_of(cls, spec: ModelSpec) -> str | None:
        if spec.train is not None:
            return spec.train.position
        return read_card(spec.checkpoint)["architecture"]["position"]

    @classmethod
    def preflight_tokenizer(cls, spec: ModelSpec, where: str) -> TextTokenizer:
        """The checkpoint's tokenizer, or the recipe's (its tasks' training examples tried at its length)."""
        import numpy as np

        from lceval.models.checkpoint import TOKENIZER
        from lceval.train.trainer import build_tasks, mixture_tokenizer

        if spec.checkpoint is not None:
            return TextTokenizer.load(spec.checkpoint / TOKENIZER)
        recipe_tasks = build_tasks(spec.train, seed=0)
        tok = mixture_tokenizer(recipe_tasks)
        for t, task in recipe_tasks.items():
            try:
                task.training_example(np.random.default_rng(0), spec.train.train_length, tok)
            except UserError as exc:
                raise ConfigError(f"{where}.train.train_length", f"too short for task {t}: {exc}") from None
        return tok

    def prepare(self) -> None:
        if getattr(self, "model", None) is not None:
            return
        if self.spec.checkpoint is None:
            raise UserError("a reference model's recipe is trained before it is loaded: pass "
                            "lceval.train.ensure_trained(spec) as its checkpoint")
        self.path = Path(zoo_path(self.spec.checkpoint))
        # hashed before loading, so what was loaded is what was hashed (load_checkpoint explains a missing file)
        self.content_hash = content_hash(self.path) if is_complete(self.path) else None
        self.model, self.tokenizer, self.card = load_checkpoint(self.path)
        self.model.to(self.device)
        if self.spec.dtype != "auto":  # weights and activations in this dtype; attention accumulates in float32
            self.model.to(DTYPES[self.spec.dtype])
        arch = self.model.arch
        self.position = arch.position
        self.n_heads = arch.n_heads
        self.n_layers = arch.n_layers
        self.max_length = self.model.position.max_supported_length

    def with_attention(self, attention: Attention) -> nn.Module:
        self.model.set_attention(attention)
        return self.model

    def describe(self) -> dict:
        return {"type": self.name, "path": str(self.path), "position": self.position, "sha256": self.content_hash,
                "training_length": self.card.get("training_length"), "measured": self.card.get("measured")}
