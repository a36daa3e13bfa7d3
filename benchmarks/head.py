"""The output head at decoding sizes: transformers' ``x W^T`` (``nn.Linear``) against lceval's ``W @ x^T``.

    python benchmarks/head.py                     # SmolLM2's head (49152 x 576), 2 threads
    python benchmarks/head.py --vocab 32000 --width 4096 --threads 2

A decoding step puts one row per prompt through a head of the whole vocabulary, a matrix far larger than the
caches. Random weights; median of ``--repeats`` calls after one warm-up. Both are timed in this process, so the
ratio is the figure that travels. The last column is the largest difference between the two (float32 sums of
the same products in another order).
"""

from __future__ import annotations

import argparse

import torch
from cpu import timed  # benchmarks/cpu.py: median of repeats after a warm-up, in ms
from torch import nn

from lceval.models.hf import head_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(args.width, args.vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(args.vocab, args.width, generator=g) * 0.02)
    print(f"head {args.vocab} x {args.width}, float32, {args.threads} threads; ms per call (median of {args.repeats})")
    print(f"{'rows':>5} {'nn.Linear':>10} {'lceval':>8} {'speed-up':>9} {'max |diff|':>11}")
    with torch.no_grad():
        for rows in args.rows:
            x = torch.randn(rows, 1, args.width, generator=g)
            plain = timed(lambda x=x: head(x), args.repeats)
            ours = timed(lambda x=x: head_logits(head, x), args.repeats)
            diff = (head(x) - head_logits(head, x)).abs().max().item()
            print(f"{rows:>5} {plain:>10.1f} {ours:>8.1f} {plain / ours:>8.2f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
