"""CPU attention paths against torch SDPA and compiled FlexAttention, in one run.

    python benchmarks/cpu.py                      # 16k and 64k tokens, 1 thread
    python benchmarks/cpu.py --lengths 16384 --threads 2

Shapes: B 1, H 4, head dim 64, causal, float32; median of ``--repeats`` calls
after one warm-up call. FlexAttention is compiled once per mask (its compile
time is printed separately and excluded). Every ratio compares two paths timed
in this same process, so the figures travel between machines better than the
milliseconds do. The last table times a reference-model forward at the reference
models' shape (d 64, 2 heads of 32, 2 layers, no convolution) against its
attention calls alone (same shapes, 2 layers): the rest of the model must not
dominate. ``--model-only`` prints just that table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

WINDOW, BLOCK, LOCAL, GLOBAL = 1024, 64, 4, 1


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000


def flex_paths(T: int):
    """Compiled FlexAttention calls for the window and the block-sparse layout."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def window(b, h, q, kv):
        return (kv <= q) & (q - kv < WINDOW)

    def sparse(b, h, q, kv):
        qb, kb = q // BLOCK, kv // BLOCK
        return (kv <= q) & (((kb <= qb) & (kb > qb - LOCAL)) | (kb < GLOBAL))

    compiled = torch.compile(flex_attention, dynamic=False)
    make_mask = torch.compile(create_block_mask)  # compiled, it never materialises the dense T x T mask (34 GB at 64k)
    fns = {}
    for name, mod in (("window", window), ("sparse", sparse)):
        mask = make_mask(mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device="cpu")
        fns[name] = lambda q, k, v, m=mask: compiled(q, k, v, block_mask=m)
    return fns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-only", action="store_true", help="only the reference-model table")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (no compiler available)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lceval.attention import build_attention

    variants = {
        "flash": build_attention("flash"),
        "sliding_window": build_attention("sliding_window", window=WINDOW),
        "sparse": build_attention("sparse", block=BLOCK, local_blocks=LOCAL, global_blocks=GLOBAL),
        "linear": build_attention("linear"),
    }
    if args.model_only:
        model_table(args)
        return 0
    print(f"# CPU attention, B 1, H 4, D 64, causal, float32, {args.threads} thread(s), median of {args.repeats}\n")
    for T in args.lengths:
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(1, 4, T, 64, generator=g) for _ in range(3))
        ms = {"sdpa": timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.repeats)}
        for name, attn in variants.items():
            ms[name] = timed(lambda a=attn: a(q, k, v, causal=True), args.repeats)
        if not args.no_flex:
            t0 = time.perf_counter()
            fns = flex_paths(T)
            for fn in fns.values():
                fn(q, k, v)  # compile
            compile_s = time.perf_counter() - t0
            ms["flex_window"] = timed(lambda: fns["window"](q, k, v), args.repeats)
            ms["flex_sparse"] = timed(lambda: fns["sparse"](q, k, v), args.repeats)
        rows = [
            ("torch SDPA, dense causal", "sdpa", ""),
            ("lceval flash", "flash", f"{ms['flash'] / ms['sdpa']:.2f}x SDPA (target <= 1.05)"),
        ]
        if "flex_window" in ms:
            rows.append((f"compiled FlexAttention, sliding window {WINDOW}", "flex_window", ""))
        note = f"{ms['sdpa'] / ms['sliding_window']:.1f}x faster than SDPA (target >= 4)"
        if "flex_window" in ms:
            note = f"{ms['sliding_window'] / ms['flex_window']:.2f}x Flex (target <= 1); " + note
        rows.append((f"lceval sliding_window({WINDOW})", "sliding_window", note))
        if "flex_sparse" in ms:
            rows.append((f"compiled FlexAttention, block-sparse ({BLOCK}, {LOCAL} local + {GLOBAL} global)",
                         "flex_sparse", ""))
            rows.append(("lceval sparse (same layout)", "sparse", f"{ms['sparse'] / ms['flex_sparse']:.2f}x Flex (target <= 1)"))
        else:
            rows.append(("lceval sparse", "sparse", ""))
        rows.append(("lceval linear", "linear", f"{ms['flash'] / ms['linear']:.1f}x faster than flash (target >= 8 at 16k)"))
        print(f"## {T:,} tokens" + (f" (Flex compile: {compile_s:.1f} s, excluded)" if not args.no_flex else ""))
        print("\n| path | ms | note |\n|---|---|---|")
        for label, key, note in rows:
            print(f"| {label} | {ms[key]:,.0f} | {note} |")
        print(flush=True)
    model_table(args)
    return 0


def model_table(args) -> None:
    """A reference-model forward at the longest length vs its attention calls alone, and vs the same model
    with the baseline attention (compiled Flex for window and sparse, flash for linear)."""
    from lceval.attention import build_attention
    from lceval.models.reference import EVAL_ROWS, Architecture, ReferenceTransformer

    T = max(args.lengths)
    arch = Architecture(vocab_size=256, d_model=64, n_layers=2, n_heads=2, position="rotary", conv_kernel=0,
                        max_length=T)
    print(f"## Reference-model forward at {T:,} tokens (d 64, 2 heads, 2 layers) vs its attention alone\n")
    print("The rest of the model (norms, projections, rotary, MLP) is timed with the attention replaced by a no-op. "
          "The target is read two ways: (1) model / attention-only <= 1.2; (2) the model-level ratio against the "
          "same model with the baseline attention (Flex for window and sparse, flash for linear) within 1.2x of "
          "the attention-only ratio.\n")
    print("| variant | model ms | attention-only ms | rest of model ms | (1) model / attention "
          "| baseline model ms / attention ms | model / baseline model | (2) model ratio / attention ratio |\n"
          "|---|---|---|---|---|---|---|---|")
    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(0))
    q, k, v = (torch.randn(1, 2, T, 32) for _ in range(3))
    last = torch.tensor([[T - 1]])
    flex = {} if args.no_flex else flex_paths(T)

    def forward(mm):
        return mm.logits_at(mm.hidden(ids), last)

    floors = []
    with torch.no_grad():
        bare = ReferenceTransformer(arch, build_attention("full")).eval()
        bare.set_attention(lambda q, k, v, causal=True, score_mod=None: v)  # the rest of the model alone
        rest = timed(lambda: forward(bare), args.repeats)
        # the rest's matrix products alone, at the speed this machine multiplies a row block by the MLP's weights
        flops = T * sum(2 * m.weight.numel() for m in bare.blocks.modules() if isinstance(m, torch.nn.Linear))
        x, w = torch.randn(EVAL_ROWS, arch.d_model), torch.randn(arch.d_model, arch.mlp_ratio * arch.d_model)
        gemm = timed(lambda: torch.mm(x, w), 20 * args.repeats) / 1000
        peak = 2 * x.shape[0] * w.numel() / gemm  # flop/s
        matmuls = flops / peak * 1000
        flash = build_attention("flash")
        for name, params, base in [("sliding_window", {"window": WINDOW}, flex.get("window")),
                                   ("sparse", {"block": BLOCK, "local_blocks": LOCAL, "global_blocks": GLOBAL},
                                    flex.get("sparse")),
                                   ("linear", {}, lambda q, k, v: flash(q, k, v, causal=True))]:
            model = ReferenceTransformer(arch, build_attention(name, **params)).eval()
            m = timed(lambda mm=model: forward(mm), args.repeats)
            a = arch.n_layers * timed(lambda mm=model: mm.attention(q, k, v, causal=True), args.repeats)
            other = "- | - | -"
            if base is not None:
                model.set_attention(lambda q, k, v, causal=True, score_mod=None, f=base: f(q, k, v))
                bm = timed(lambda mm=model: forward(mm), args.repeats)
                ba = arch.n_layers * timed(lambda: base(q, k, v), args.repeats)
                other = f"{bm:,.0f} / {ba:,.0f} | {m / bm:.2f} | {(m / bm) / (a / ba):.2f}"
                floors.append((name, (a + matmuls) / a, ((a + matmuls) / (ba + matmuls)) / (a / ba)))
            print(f"| {name} | {m:,.0f} | {a:,.0f} | {rest:,.0f} | {m / a:.2f} | {other} |", flush=True)
    print(f"\nFloor: the rest's matrix products alone ({flops / 1e9:.1f} GFLOP) at this machine's measured speed for "
          f"a ({EVAL_ROWS} x {arch.d_model}) @ ({arch.d_model} x {arch.mlp_ratio * arch.d_model}) product "
          f"({peak / 1e9:.0f} GFLOP/s) take {matmuls:,.0f} ms, before any norm, activation or copy. With the "
          "attention-only times above, no implementation of the rest can bring the ratios below:\n")
    print("| variant | (1) floor | (2) floor |\n|---|---|---|")
    for name, one, two in floors:
        print(f"| {name} | {one:.2f} | {two:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
