"""Model adapters: how a configured model becomes something the runner can score.

An adapter gives the runner a tokenizer and, for an attention variant, a
module with ``hidden(ids)`` and ``logits_at(hidden, index)`` that routes its
attention through that lceval backend.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lceval.attention import Attention
from lceval.config import ModelSpec
from lceval.models.checkpoint import is_complete, load_checkpoint, zoo_path
from lceval.paths import cache_dir
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
    #: query heads, for memory estimates
    n_heads: int = 1
    position: str = "unknown"

    def prepare(self) -> None:
        """Load (or build) the model once; called before the first pairing uses it."""

    def with_attention(self, attention: Attention) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": self.name}


class ReferenceAdapter(ModelAdapter):
    """The built-in reference transformer, from a checkpoint or trained on first use."""

    name = "reference"

    def prepare(self) -> None:
        if getattr(self, "model", None) is not None:
            return
        path = zoo_path(self.spec.checkpoint) if self.spec.checkpoint is not None else self.ensure_trained()
        self.path = Path(path)
        # hashed before loading, so what was loaded is what was hashed (load_checkpoint explains a missing file)
        self.content_hash = content_hash(self.path) if is_complete(self.path) else None
        self.model, self.tokenizer, self.card = load_checkpoint(self.path)
        self.model.to(self.device)
        if self.spec.dtype != "auto":  # weights and activations in this dtype; attention accumulates in float32
            self.model.to(DTYPES[self.spec.dtype])
        arch = self.model.arch
        self.position = arch.position
        self.n_heads = arch.n_heads
        self.max_length = self.model.position.max_supported_length

    def ensure_trained(self) -> Path:
        from lceval import registry
        from lceval.train import train

        recipe = self.spec.train
        versions = {n: registry.tasks.get(n).version for n in recipe.mixture()}  # a changed generator retrains
        payload = {"recipe": recipe.model_dump(mode="json"), "task_versions": versions}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        path = cache_dir() / "models" / f"{recipe.position}-{digest[:12]}"
        if is_complete(path):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:  # one process trains; the others wait for it
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not is_complete(path):
                train(recipe, path, progress=self.progress, device=self.device)
        return path

    def with_attention(self, attention: Attention) -> nn.Module:
        self.model.attention = attention
        return self.model

    def describe(self) -> dict:
        return {"type": self.name, "path": str(self.path), "position": self.position, "sha256": self.content_hash,
                "training_length": self.card.get("training_length"), "measured": self.card.get("measured")}
