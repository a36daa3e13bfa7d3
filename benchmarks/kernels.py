"""Benchmark lceval's Triton attention kernels against torch on a CUDA GPU.

    python benchmarks/kernels.py [--dtype bf16] [--lengths 1024 ... 32768] [--csv kernels.csv]
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke    # CPU: checks the script, times nothing real

For each N and head dim D in {64, 128} (hidden size 2048, batch x N = 16k
tokens), causal and not, it times with ``triton.testing.do_bench`` (median
after warm-up, random data):

* flash vs torch SDPA (flash backend) and FlexAttention (compiled), same mask;
* sliding window (W=1024) vs FlexAttention with the window mask and vs dense causal SDPA;
* block sparse (10% of blocks) vs FlexAttention with the same block mask;
* linear (causal) vs the flash kernel, causal.

TFLOP/s count only visible (query, key) pairs (density-scaled). Each kernel's
output is checked against SDPA/Flex on the same data before it is timed. The
last lines say whether the issue's H100 targets held.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import torch


def bench(fn, smoke: bool) -> float:
    """Median milliseconds."""
    if smoke:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def visible_pairs(kind: str, N: int, causal: bool, window: int, density: float) -> float:
    if kind == "window":
        return sum(min(i + 1, window) for i in range(N)) if causal else N * min(N, 2 * window - 1)
    if kind == "sparse":
        return density * N * N
    return N * (N + 1) / 2 if causal else N * N


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--density", type=float, default=0.10)
    ap.add_argument("--csv", default="kernels.csv")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles per mask)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU under TRITON_INTERPRET=1")
    ap.add_argument("--tune", nargs="?", const="flash,window,sparse,linear", default=None,
                    help="sweep tile configs of these kernels (comma list; default all) instead of benchmarking")
    args = ap.parse_args()

    if not args.smoke and not torch.cuda.is_available():
        print("error: benchmarks/kernels.py needs a CUDA GPU; none found (use --smoke to check the script on a CPU)",
              file=sys.stderr)
        sys.exit(2)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("error: --smoke needs TRITON_INTERPRET=1 set before starting Python", file=sys.stderr)
            sys.exit(2)
        args.lengths, args.dims, args.dtype, args.window, args.no_flex = [64, 96], [16], "fp32", 32, True

    if args.tune:
        tune(args)
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lceval.kernels import block_sparse_attention, flash_attention, linear_attention, sliding_window_attention
    from lceval.kernels.block_sparse import layout_lut
    from lceval.kernels.linear import linear_attention_ref

    device = "cpu" if args.smoke else "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}[dtype]
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        # one compiled graph per (shape, mask): raise dynamo's recompile limit, or it silently falls back to the
        # unfused eager path (which builds the whole score matrix and runs out of memory at 32k)
        torch._dynamo.config.cache_size_limit = 1024
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 1024
        flex = torch.compile(flex_attention, dynamic=False)

    def sdpa(q, k, v, causal):
        if args.smoke:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    rows = []

    def record(op, N, D, causal, ms, pairs, baseline, base_ms, ok):
        tflops = 4 * B * H * pairs * D / (ms * 1e-3) / 1e12
        rows.append({"op": op, "N": N, "D": D, "causal": causal, "ms": round(ms, 4), "tflops": round(tflops, 1),
                     "baseline": baseline, "baseline_ms": None if base_ms is None else round(base_ms, 4),
                     "speedup": None if base_ms is None else round(base_ms / ms, 2), "matches": ok})
        show(rows[-1])

    def show(r):
        mask = "causal" if r["causal"] else "full  "
        print(f"{r['op']:>14} N={r['N']:>6} D={r['D']:>3} {mask} {r['ms']:9.3f} ms {r['tflops']:7.1f} TF/s"
              f"  vs {r['baseline']:<12} {'-' if r['speedup'] is None else r['speedup']:>6}x  match={r['matches']}",
              flush=True)

    for D in args.dims:
        H = 2 if args.smoke else 2048 // D
        for N in args.lengths:
            B = 1 if args.smoke else max(1, 16384 // N)
            q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype) for _ in range(3))
            for causal in (False, True):
                # flash vs SDPA flash backend, and vs Flex with the same (causal or no) mask
                ref = sdpa(q, k, v, causal)
                ok = (flash_attention(q, k, v, causal=causal) - ref).abs().max().item() <= tol
                ms = bench(lambda: flash_attention(q, k, v, causal=causal), args.smoke)
                record("flash", N, D, causal, ms, visible_pairs("dense", N, causal, 0, 1), "sdpa_flash",
                       bench(lambda: sdpa(q, k, v, causal), args.smoke), ok)
                if flex is not None:
                    bm = create_block_mask((lambda b, h, i, j: j <= i) if causal else (lambda b, h, i, j: j >= 0),
                                           None, None, N, N, device=device)
                    base = bench(lambda: flex(q, k, v, block_mask=bm), False)
                    rows.append(dict(rows[-1], baseline="flex", baseline_ms=round(base, 4), speedup=round(base / ms, 2)))
                    show(rows[-1])
            # sliding window (causal) vs Flex with the same mask, and vs dense causal SDPA
            W = args.window
            sw = lambda: sliding_window_attention(q, k, v, W)  # noqa: E731
            i_, j_ = torch.arange(N, device=device)[:, None], torch.arange(N, device=device)[None, :]
            ok = True
            if N <= 8192:
                want = torch.nn.functional.scaled_dot_product_attention(
                    q[:1, :1].float(), k[:1, :1].float(), v[:1, :1].float(), attn_mask=(j_ <= i_) & (j_ > i_ - W))
                ok = (sw()[:1, :1].float() - want).abs().max().item() <= tol
            ms = bench(sw, args.smoke)
            pairs = visible_pairs("window", N, True, W, 0)
            dense_ms = bench(lambda: sdpa(q, k, v, True), args.smoke)
            record("sliding_window", N, D, True, ms, pairs, "dense_causal", dense_ms, ok)
            if flex is not None:
                bm = create_block_mask(lambda b, h, i, j: (j <= i) & (j > i - W), None, None, N, N, device=device)
                base = bench(lambda: flex(q, k, v, block_mask=bm), False)
                rows.append(dict(rows[-1], baseline="flex", baseline_ms=round(base, 4), speedup=round(base / ms, 2)))
                show(rows[-1])
            # block sparse at the requested density (random causal-free layout, fixed seed)
            block = 16 if args.smoke else 128
            nb = -(-N // block)
            g = torch.Generator().manual_seed(0)
            layout = (torch.rand(1, nb, nb, generator=g) < args.density)
            layout |= torch.eye(nb, dtype=torch.bool)[None]
            layout = layout.to(device)
            density = layout.float().mean().item()
            lut = layout_lut(layout, block, N, N, causal=False)  # compiled once, like Flex's block mask
            bs = lambda: block_sparse_attention(q, k, v, lut, block, causal=False)  # noqa: E731
            ok = True
            if N <= 8192:
                el = layout[0][torch.arange(N, device=device) // block][:, torch.arange(N, device=device) // block]
                want = torch.nn.functional.scaled_dot_product_attention(q[:1, :1].float(), k[:1, :1].float(),
                                                                        v[:1, :1].float(), attn_mask=el)
                ok = (bs()[:1, :1].float() - want).abs().max().item() <= tol
            ms = bench(bs, args.smoke)
            record("block_sparse", N, D, False, ms, visible_pairs("sparse", N, False, 0, density), "dense",
                   bench(lambda: sdpa(q, k, v, False), args.smoke), ok)
            if flex is not None:
                lay = layout[0]
                bm = create_block_mask(lambda b, h, i, j: lay[i // block, j // block], None, None, N, N, device=device,
                                       BLOCK_SIZE=block)
                base = bench(lambda: flex(q, k, v, block_mask=bm), False)
                rows.append(dict(rows[-1], baseline="flex", baseline_ms=round(base, 4), speedup=round(base / ms, 2)))
                show(rows[-1])
            # linear (causal) vs the flash kernel, causal
            ok = True
            if N <= 8192:
                want = linear_attention_ref(q[:1, :1].float(), k[:1, :1].float(), v[:1, :1].float())
                ok = (linear_attention(q, k, v)[:1, :1].float() - want).abs().max().item() <= tol
            ms = bench(lambda: linear_attention(q, k, v), args.smoke)
            base = bench(lambda: flash_attention(q, k, v, causal=True), args.smoke)
            record("linear", N, D, True, ms, visible_pairs("dense", N, True, 0, 1), "flash_causal", base, ok)

    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {args.csv} ({len(rows)} rows)")
    targets(rows)


def tune(args) -> None:
    """Time tile configs (env overrides read by the launchers) at the issue's target shapes; prints one table."""
    import triton.testing

    from lceval.kernels import block_sparse_attention, flash_attention, linear_attention, sliding_window_attention
    from lceval.kernels.block_sparse import layout_lut

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    flash_cfgs = ["128,128,8,3", "64,64,4,3", "128,64,8,3", "128,128,8,4", "64,128,4,3"]
    window_cfgs = ["64,64,4,3", "64,64,4,4", "64,64,4,2", "64,32,4,3", "32,64,4,3", "64,64,8,3", "64,128,4,3",
                   "128,64,4,4", "64,32,2,3", "32,32,2,3"]
    sparse_cfgs = ["4,2", "4,3", "8,2", "8,3", "8,4"]
    linear_cfgs = ["64,64,4,2", "64,64,8,2", "64,32,4,2", "64,128,8,2", "32,64,4,2", "128,64,8,2", "64,64,4,3",
                   "32,128,4,2", "32,32,2,2"]
    med = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
    print("kernel,D,N,causal,config,ms", flush=True)
    for D in args.dims:
        H = 2048 // D
        kinds = args.tune.split(",")
        for N, causal, what in [(16384, False, "flash"), (16384, True, "flash"), (32768, True, "window")]:
            if what not in kinds:
                continue
            q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=dtype) for _ in range(3))
            for cfg in flash_cfgs if what == "flash" else window_cfgs:
                os.environ["LCEVAL_FLASH_TILES"] = cfg
                fn = (lambda: flash_attention(q, k, v, causal=causal)) if what == "flash" else (
                    lambda: sliding_window_attention(q, k, v, args.window))
                try:
                    print(f"{what},{D},{N},{causal},{cfg},{med(fn):.4f}", flush=True)
                except Exception as e:  # noqa: BLE001 - a config may not fit in shared memory
                    print(f"{what},{D},{N},{causal},{cfg},fail:{type(e).__name__}", flush=True)
            os.environ.pop("LCEVAL_FLASH_TILES")
        for N in (16384, 32768) if "sparse" in kinds else ():
            q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=dtype) for _ in range(3))
            nb = N // 128
            lay = (torch.rand(1, nb, nb, generator=torch.Generator().manual_seed(0)) < args.density)
            lut = layout_lut((lay | torch.eye(nb, dtype=torch.bool)[None]).cuda(), 128, N, N, causal=False)
            for cfg in sparse_cfgs:
                os.environ["LCEVAL_SPARSE_TILES"] = cfg
                try:
                    ms = med(lambda: block_sparse_attention(q, k, v, lut, 128, causal=False))
                    print(f"sparse,{D},{N},False,{cfg},{ms:.4f}", flush=True)
                except Exception as e:  # noqa: BLE001 - a config may not fit in shared memory
                    print(f"sparse,{D},{N},False,{cfg},fail:{type(e).__name__}", flush=True)
            os.environ.pop("LCEVAL_SPARSE_TILES")
        for N in (2048, 16384) if "linear" in kinds else ():
            B = max(1, 16384 // N)
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype) for _ in range(3))
            print(f"flash,{D},{N},True,default,{med(lambda: flash_attention(q, k, v, causal=True)):.4f}", flush=True)
            for cfg in linear_cfgs:
                os.environ["LCEVAL_LINEAR_TILES"] = cfg
                try:
                    print(f"linear,{D},{N},True,{cfg},{med(lambda: linear_attention(q, k, v)):.4f}", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"linear,{D},{N},True,{cfg},fail:{type(e).__name__}", flush=True)
            os.environ.pop("LCEVAL_LINEAR_TILES")


def targets(rows: list[dict]) -> None:
    """The issue's H100 bf16 targets, read off the rows (MISS where a baseline is missing)."""

    def find(op, baseline, N=None, D=None, causal=None):
        return [r for r in rows if r["op"] == op and r["baseline"] == baseline and (N is None or r["N"] == N)
                and (D is None or r["D"] == D) and (causal is None or r["causal"] == causal)]

    checks = [
        ("flash >= 1.0x sdpa_flash (hd128, 16k, non-causal)", find("flash", "sdpa_flash", 16384, 128, False), 1.0),
        ("flash >= 1.0x sdpa_flash (hd128, 16k, causal)", find("flash", "sdpa_flash", 16384, 128, True), 1.0),
        ("sliding_window >= 1.2x flex (W=1024, 32k)", find("sliding_window", "flex", 32768), 1.2),
        ("sliding_window >= 8x dense causal (W=1024, 32k)", find("sliding_window", "dense_causal", 32768), 8.0),
        ("block_sparse >= 1.0x flex (10% density)", find("block_sparse", "flex"), 1.0),
        ("linear faster than flash causal from 2k", [r for r in find("linear", "flash_causal") if r["N"] >= 2048], 1.0),
    ]
    for name, found, need in checks:
        if not found:
            print(f"  n/a   {name}")
            continue
        worst = min(r["speedup"] for r in found)
        print(f"  {'PASS' if worst >= need else 'MISS'}  {name}: worst {worst:.2f}x over {len(found)} rows")
    bad = [r for r in rows if not r["matches"]]
    print(f"  {'PASS' if not bad else 'FAIL'}  outputs match the torch baselines ({len(bad)} mismatches)")


if __name__ == "__main__":
    main()
