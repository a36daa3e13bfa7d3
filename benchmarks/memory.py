"""Peak memory and time of one reference-model forward per attention variant, on CPU.

    python benchmarks/memory.py [--lengths 4096 16384 65536] [--csv out.csv]

Each (variant, length) runs in a fresh process. Just before the forward, the
process resets the kernel's peak-RSS mark (/proc/self/clear_refs) and notes
its RSS; the figure reported is the peak RSS during the forward minus that
baseline. The forward is what the runner does: hidden states for the whole
input and logits at the last position only. The model is the quickstart's
shape (d 64, 2 layers, 2 heads, rotary), randomly initialised.

Each worker runs with MALLOC_MMAP_THRESHOLD_=65536 so glibc serves every
large tensor from mmap and returns it when freed; RSS then follows live
tensors instead of allocator reuse (measured spread between repeats: about
20% without it, about 3% with it). The median of ``--repeats`` runs is shown.
The times come from the same processes, so they include mmap's page faults
and are pessimistic (up to ~2x for sliding_window at 64k).

`full` is skipped where its score matrix exceeds the runner's default memory
budget, exactly as a run would record `skipped_memory`. The last column is
the 16k -> 64k growth ratio; O(n) variants must stay at or under 4.5x.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "full": {},
    "flash": {},
    "sliding_window": {"window": 256},
    "sparse": {"block": 64, "local_blocks": 4, "global_blocks": 1},
    "linear": {},
}
BUDGET_MB = 4096  # RunSpec.memory_budget_mb's default


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def one(variant: str, length: int) -> dict:
    import torch

    from lceval.attention import build_attention
    from lceval.models.reference import Architecture, ReferenceTransformer

    torch.manual_seed(0)
    attn = build_attention(variant, **VARIANTS[variant])
    arch = Architecture(vocab_size=256, d_model=64, n_layers=2, n_heads=2, position="rotary")
    model = ReferenceTransformer(arch, attn).eval()
    need = attn.score_bytes(1, arch.n_heads, length, length) / 2**20
    if need > BUDGET_MB:
        return {"variant": variant, "length": length, "status": "skipped_memory", "peak_mib": None,
                "seconds": None, "note": f"scores need {need:,.0f} MiB > budget {BUDGET_MB}"}
    ids = torch.randint(0, 256, (1, length))
    index = torch.tensor([[length - 1]])
    with torch.no_grad():
        model.logits_at(model.hidden(ids[:, :64]), torch.tensor([[63]]))  # warm-up: load kernels
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark (VmHWM)
        base = rss_kib("VmRSS")
        t0 = time.perf_counter()
        out = model.logits_at(model.hidden(ids), index)
        seconds = time.perf_counter() - t0
        peak = rss_kib("VmHWM")
    assert torch.isfinite(out).all()
    return {"variant": variant, "length": length, "status": "ok", "peak_mib": round((peak - base) / 1024, 1),
            "seconds": round(seconds, 3), "impl": attn.last_impl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per cell; the median is reported")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = []
    for v in args.variants:
        for n in args.lengths:
            runs = []
            for _ in range(args.repeats):
                res = subprocess.run([sys.executable, __file__, "--one", v, str(n)], capture_output=True, text=True,
                                     env=env)
                if res.returncode != 0:
                    runs = [{"variant": v, "length": n, "status": "error", "note": res.stderr.strip()[-200:]}]
                    break
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                if runs[-1]["status"] != "ok":
                    break
            ok = [r for r in runs if r["status"] == "ok"]
            if ok:
                mid = len(ok) // 2
                r = dict(sorted(ok, key=lambda x: x["peak_mib"])[mid])
                r["seconds"] = sorted(x["seconds"] for x in ok)[mid]
                results.append(r)
            else:
                results.append(runs[-1])
            r = results[-1]
            print(f"  {v:>15} {n:>7}: {r['status']} {r.get('peak_mib')} MiB {r.get('seconds')} s", file=sys.stderr)
    lengths = args.lengths
    head = f"{'variant':>15} | " + " | ".join(f"{n // 1024}k MiB (s)".rjust(16) for n in lengths) + " | growth"
    print(head)
    print("-" * len(head))
    failed = False
    for v in args.variants:
        by = {r["length"]: r for r in results if r["variant"] == v}
        cells = []
        for n in lengths:
            r = by[n]
            cells.append((f"{r['peak_mib']:.1f} ({r['seconds']:.2f})" if r["status"] == "ok" else r["status"]).rjust(16))
        growth = "-"
        if len(lengths) >= 2 and all(by[n]["status"] == "ok" for n in lengths[-2:]):
            ratio = by[lengths[-1]]["peak_mib"] / max(by[lengths[-2]]["peak_mib"], 1e-9)
            growth = f"{ratio:.2f}x"
            if v != "full" and ratio > 4.5 * lengths[-1] / lengths[-2] / 4:
                growth += " (over the O(n) bound)"
                failed = True
        print(f"{v:>15} | " + " | ".join(cells) + f" | {growth}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["variant", "length", "status", "peak_mib", "seconds", "impl", "note"])
            w.writeheader()
            for r in results:
                w.writerow({k: r.get(k) for k in w.fieldnames})
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
