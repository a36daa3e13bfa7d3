"""Harness overhead on a Hugging Face model: lceval's scoring vs a bare loop over the same inputs, one process.

    python benchmarks/throughput.py [--lengths 1024 2048] [--samples 8] [--hidden 256] [--layers 4]

A tiny random Llama (built here, saved with safetensors, byte-level BPE trained here) is run through
``Runner.run`` on the needle task (teacher-forced scoring, `full` and `flash`), after a first run has
filled the sample cache and loaded the model; then the same prompt + answer ids go through a bare loop of
``model(input_ids)`` with transformers' own sdpa attention, same batch size. Prints tokens/s of each and the
ratio; the target is at most 10% harness overhead (ratio >= 0.90).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def build_model(root: Path, hidden: int, layers: int) -> Path:
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import train_byte_bpe
    from lceval.tasks.haystack import essay_sentence
    from lceval.tasks.niah import KEYS, NEEDLE, QUESTION

    rng = np.random.default_rng(0)
    corpus = [essay_sentence(rng) for _ in range(400)]
    corpus += [NEEDLE.format(key=k, value=100 + i) + " " + QUESTION.format(key=k) for i, k in enumerate(KEYS)]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(corpus, 1000), bos_token="<s>", eos_token="<s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), max_position_embeddings=1 << 16,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    path = root / "llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from lceval.resolve import resolve
    from lceval.runner import Runner
    from lceval.store import read_rows

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("LCEVAL_CACHE", str(root / "cache"))
        path = build_model(root, args.hidden, args.layers)
        data = {"run": {"name": "tp", "seed": 0, "batch_size": args.batch_size, "threads": torch.get_num_threads()},
                "models": {"m": {"type": "hf", "path": str(path)}},
                "pairings": [{"model": "m", "attention": "flash"}],
                "tasks": {"niah": {"lengths": args.lengths, "depths": [0.5], "samples": args.samples}}}
        runner = Runner(resolve(data, root), progress=False)
        runner.run(root / "warm")  # fills the sample cache and loads the model
        t0 = time.perf_counter()
        runner.run(root / "timed")
        harness = time.perf_counter() - t0
        rows = read_rows(root / "timed")
        samples = {s.id: s for name in runner.tasks for s in runner.samples(name, runner.adapter("m"))}
        inputs = [samples[r["sample_id"]].input_ids + samples[r["sample_id"]].answer_ids for r in rows]
        tokens = sum(len(x) for x in inputs)

        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
        by_len: dict[int, list[list[int]]] = {}
        for x in inputs:
            by_len.setdefault(len(x), []).append(x)
        with torch.no_grad():
            for xs in by_len.values():  # warm-up
                lm(torch.tensor(xs[:1]))
            t0 = time.perf_counter()
            for xs in by_len.values():
                for i in range(0, len(xs), args.batch_size):
                    lm(torch.tensor(xs[i:i + args.batch_size]))
            bare = time.perf_counter() - t0
    print(f"{len(rows)} samples, {tokens} tokens, lengths {args.lengths}, hidden {args.hidden}, {args.layers} layers, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"lceval run (flash, teacher-forced, store + fsync): {harness:7.2f} s  {tokens / harness:9.0f} tok/s")
    print(f"bare model(input_ids) loop (sdpa):                 {bare:7.2f} s  {tokens / bare:9.0f} tok/s")
    ratio = (tokens / harness) / (tokens / bare)
    print(f"ratio lceval / bare: {ratio:.3f}  ({'PASS' if ratio >= 0.90 else 'MISS'}: target >= 0.90, "
          f"harness overhead {max(0.0, 1 / ratio - 1):.1%})")


if __name__ == "__main__":
    main()
