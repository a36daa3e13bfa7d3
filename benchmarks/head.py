"""Linear layers at decoding sizes: transformers' ``x W^T`` (``nn.Linear``) against lceval's ``W @ x^T``.

    python benchmarks/head.py                     # SmolLM2's head (49152 x 576), 2 threads
    python benchmarks/head.py --vocab 32000 --width 4096 --threads 2
    python benchmarks/head.py --decode            # SmolLM2's projections: 30 layers of q, k, v, o, gate, up, down

A decoding step puts one row per prompt through a head of the whole vocabulary, a matrix far larger than the
caches, and through every projection of every layer (``--decode``: each of the 30 layers its own random
weights, so they are read from memory as a model's are; ``--width`` and ``--hidden`` set the sizes, ``--kv`` the
key/value width). Random weights; median of ``--repeats`` calls after one warm-up. Both are timed in this
process, so the ratio is the figure that travels. The last column is the largest difference between the two
(float32 sums of the same products in another order).
"""

from __future__ import annotations

import argparse

import torch
from cpu import timed  # benchmarks/cpu.py: median of repeats after a warm-up, in ms
from torch import nn

from lceval.models.hf import head_logits
from lceval.models.hf_lean import weight_major


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--decode", action="store_true", help="a decoding step's projections instead of the head")
    ap.add_argument("--hidden", type=int, default=1536, help="--decode: the MLP's hidden width")
    ap.add_argument("--kv", type=int, default=192, help="--decode: the key and value projections' width")
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    if args.decode:
        return decode_step(args, g)
    head = nn.Linear(args.width, args.vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(args.vocab, args.width, generator=g) * 0.02)
    print(f"head {args.vocab} x {args.width}, float32, {args.threads} threads; ms per call (median of {args.repeats})")
    table(args, lambda rows: [(head, torch.randn(rows, 1, args.width, generator=g))], head_logits)


def decode_step(args, g: torch.Generator) -> None:
    """Every projection of ``--layers`` layers (q, k, v, o, gate, up, down), each its own weights, on a few rows."""
    d, h, kv = args.width, args.hidden, args.kv
    shapes = [(d, d), (kv, d), (kv, d), (d, d), (h, d), (h, d), (d, h)]  # (out, in)
    layers = []
    for _ in range(args.layers):
        for out, inp in shapes:
            lin = nn.Linear(inp, out, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(out, inp, generator=g) * 0.02)
            layers.append(lin)
    mb = sum(lin.weight.numel() for lin in layers) * 4 / 2**20
    print(f"{args.layers} layers of projections (width {d}, hidden {h}, key/value {kv}; {mb:.0f} MiB of float32 "
          f"weights), {args.threads} threads; ms per decoding step's projections (median of {args.repeats})")

    def calls(rows: int) -> list[tuple[nn.Linear, torch.Tensor]]:  # one input per width, shared by the layers
        xs = {inp: torch.randn(rows, 1, inp, generator=g) for _, inp in shapes}
        return [(lin, xs[lin.in_features]) for lin in layers]

    table(args, calls, weight_major)


def table(args, calls, ours) -> None:
    """For each of ``--rows``: ``calls(rows)`` (linear layer, input) pairs, all run through nn.Linear and all
    through ``ours``, timed; the speed-up and the largest difference of any output."""
    print(f"{'rows':>5} {'nn.Linear':>10} {'lceval':>8} {'speed-up':>9} {'max |diff|':>11}")
    with torch.no_grad():
        for rows in args.rows:
            pairs = calls(rows)
            plain = timed(lambda: [lin(x) for lin, x in pairs], args.repeats)
            mine = timed(lambda: [ours(lin, x) for lin, x in pairs], args.repeats)
            diff = max((lin(x) - ours(lin, x)).abs().max().item() for lin, x in pairs)
            print(f"{rows:>5} {plain:>10.1f} {mine:>8.1f} {plain / mine:>8.2f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
