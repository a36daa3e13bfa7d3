"""Shared fixtures: the quickstart's rotary model (shipped in lceval/zoo) and config helpers."""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # kernel tests run on the CPU through Triton's interpreter; it must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import yaml

from lceval.config import model_spec
from lceval.models.adapters import ReferenceAdapter
from lceval.resolve import read_yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lceval-cache")
    os.environ["LCEVAL_CACHE"] = str(path)  # subprocesses inherit it
    return path


@pytest.fixture(scope="session")
def quickstart_rotary(cache_dir) -> Path:
    """The quickstart's rotary model, as configs/quickstart.yaml names it (a shipped checkpoint)."""
    spec = model_spec(read_yaml(QUICKSTART)["models"]["rotary"])
    adapter = ReferenceAdapter(spec, progress=False)
    adapter.prepare()
    return adapter.path


@pytest.fixture
def write_config(tmp_path):
    """Write a run config (a dict) to a YAML file and return its path."""

    def write(data: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def train_byte_bpe(corpus: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained here on ``corpus`` (nothing downloaded); BOS ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def byte_bpe(corpus: list[str], vocab_size: int):
    """``train_byte_bpe`` wrapped as lceval's TextTokenizer (``<s>`` starts every prompt)."""
    from lceval.tokenizer import TextTokenizer

    tok = train_byte_bpe(corpus, vocab_size)
    return TextTokenizer(tok, bos_id=tok.token_to_id("<s>"), name="bpe")


def assert_chat_exact(tok, samples) -> None:
    """Each sample is the chat template applied to its message, token for token (``tok`` wraps a transformers
    tokenizer with ``chat_template=True``), starting with the template's head and ending with its tail."""
    hf = tok.backend
    head, tail = tok.prefix(), tok.suffix()
    assert head and tail
    for s in samples:
        assert s.input_ids[: len(head)] == head and s.input_ids[-len(tail):] == tail
        content = hf.decode(s.input_ids[len(head): -len(tail)])
        content = content if content.startswith(" ") else " " + content  # pieces follow a space; some decoders drop it
        want = hf.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        assert s.input_ids == list(want)


def word_corpus(words: list[str], per_line: int) -> list[str]:
    """Lines of ``per_line`` words ending in a full stop, three times over (a corpus for a task's words)."""
    return [" ".join(words[i : i + per_line]) + " ." for i in range(0, len(words), per_line)] * 3


def small_config(checkpoint: Path, **over) -> dict:
    """A small run over a checkpoint: 2 lengths x 3 depths x 3 samples, full + flash."""
    cfg = {
        "run": {"name": "small", "seed": 0, "batch_size": 4},
        "models": {"m": {"type": "reference", "checkpoint": str(checkpoint)}},
        "pairings": [{"model": "m", "attention": ["full", "flash"]}],
        "tasks": {"niah": {"lengths": [64, 128], "depths": [0.0, 0.5, 1.0], "samples": 3}},
    }
    for key, value in over.items():
        cfg[key] = value
    return cfg


def run_flash_and_window(checkpoint: Path, write_config, out: Path, *args: str, window: int = 16) -> Path:
    """``lceval run`` of niah (128 and 256 tokens, depths 0 and 1, 3 samples) with flash and a sliding window on
    the model at ``checkpoint``, into ``out`` (``args``: more options, e.g. ``--set``): the grid the diagnosis and
    the report's sample browser read."""
    from click.testing import CliRunner

    from lceval.cli import main

    cfg = small_config(checkpoint)
    cfg["pairings"] = [{"model": "m", "attention": ["flash", {"name": "sliding_window", "window": window}]}]
    cfg["tasks"] = {"niah": {"lengths": [128, 256], "depths": [0.0, 1.0], "samples": 3}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(out), "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return out
