"""``lceval train``: train a reference model short, to test it long.

``ensure_trained(recipe)`` is how a run gets a model from a ``train:`` recipe: the checkpoint cached under
``$LCEVAL_CACHE/models`` for that recipe (and its tasks' versions), trained first if it is not there. One
process trains; others wanting the same recipe wait for it (a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from lceval.config import TrainRecipe
from lceval.train.trainer import train

__all__ = ["TrainRecipe", "ensure_trained", "train"]


def ensure_trained(recipe: TrainRecipe, *, progress: bool = True, device: str = "cpu") -> Path:
    """The cached checkpoint of ``recipe``, trained now if missing."""
    from lceval import registry
    from lceval.models.checkpoint import is_complete
    from lceval.paths import cache_dir

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
            train(recipe, path, progress=progress, device=device)
    return path
