"""GGUF files as ``type: hf`` models: dequantized once into a cached safetensors directory.

``path: model.gguf`` is read through transformers' GGUF loader (the ``gguf``
package, ``pip install 'lceval[gguf]'``), which dequantizes every tensor to
float32 and rebuilds the config, the tokenizer and its chat template from the
file's metadata. transformers marks such a model as quantized and will not
save it, so its weights are loaded into a plain model of the same config and
that is saved, with the tokenizer, under
``$LCEVAL_CACHE/models/gguf-<sha256 of the file>``. Later runs load the
directory like any other; the run identity is the GGUF file's own hash.

GGUF is a flat binary format (a header, key-value metadata, tensors): nothing
in it is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from lceval.errors import UserError
from lceval.paths import cache_dir

MAGIC = b"GGUF"
DONE = ".complete"  # written last: a directory without it is an interrupted conversion
_hashes: dict[tuple[str, int, int], str] = {}


def is_gguf(path: Path) -> bool:
    """A file named *.gguf (checked for the magic when converted) or any file starting with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (full hex), computed once per (path, size, mtime) in this process."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _hashes[key] = h.hexdigest()
    return _hashes[key]


def converted_dir(path: Path, progress: bool = False) -> Path:
    """The cached safetensors directory of a GGUF file, converting it on first use (one process at a time)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic); give a .gguf model "
                        "file or a Hugging Face model directory")
    import importlib.util

    for package in ("gguf", "accelerate"):  # transformers' GGUF loader needs both
        if importlib.util.find_spec(package) is None:
            raise UserError(f"reading {path.name} needs the {package} package; install the extra with "
                            "pip install 'lceval[gguf]'")
    out = cache_dir() / "models" / f"gguf-{file_sha256(path)}"
    if (out / DONE).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:  # one process converts; the others wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / DONE).exists():
            _convert(path, out, progress)
    return out


def _convert(path: Path, out: Path, progress: bool) -> None:
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    # one line, once per file (about 25 s for a 135M model), whatever the progress setting; transformers' own
    # per-tensor bars are off
    print(f"lceval: dequantizing {name} once into {out} (safetensors, float32)", file=sys.stderr, flush=True)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config,
                                                             dtype=torch.float32, local_files_only=True)
        except ImportError as exc:
            raise UserError(f"reading {name}: {str(exc).splitlines()[0]}; install pip install 'lceval[gguf]'") \
                from None
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise UserError(f"{path}: transformers cannot dequantize this GGUF file ({str(exc).splitlines()[0]}); "
                            "convert it to a Hugging Face directory yourself, or use a supported architecture") \
                from None
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = plain.load_state_dict(quantized.state_dict(), strict=False)
        tied = set(getattr(plain, "_tied_weights_keys", None) or {})
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise UserError(f"{path}: the dequantized tensors do not fit a plain {config.model_type} model "
                            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
                            "convert it with transformers yourself")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / DONE).write_text(f"{name}\n")
            if out.exists():  # an interrupted conversion
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
