"""Where lceval keeps what it builds once (trained models, converted GGUF files, generated samples)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LCEVAL_CACHE`` or ``~/.cache/lceval``."""
    return Path(os.environ.get("LCEVAL_CACHE") or Path.home() / ".cache" / "lceval")
