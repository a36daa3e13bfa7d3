"""What reading attention on the needle costs: time and peak memory of scoring with and without capture.

    python benchmarks/capture.py                         # 4k and 16k tokens, the quickstart model, flash
    python benchmarks/capture.py --gguf FILE.gguf --lengths 2048 4096 --mode generate   # a real model

Each (length, capture) measurement runs in a fresh process (so peak RSS is its own): one niah sample is
scored ``--reps`` times with ``score_batch``; the best time and the process's peak RSS are printed, then
the ratio capture/plain for each length. Target (issue 21): at most 15% more time; memory O(rows x S),
never the T x S matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(length: int, capture: bool, reps: int, gguf: str | None, mode: str, attention: str) -> dict:
    import torch

    from lceval.attention import build_attention
    from lceval.registry import tasks
    from lceval.scoring import score_batch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if gguf:
        from lceval.config import HFSpec
        from lceval.models.hf import HFAdapter

        adapter = HFAdapter(HFSpec(type="hf", path=gguf, chat_template=True), progress=False)
        adapter.prepare()
        model, tok, name = adapter.with_attention(build_attention(attention)), adapter.tokenizer, "niah_single_1"
    else:
        from lceval.models.checkpoint import load_checkpoint, zoo_path

        model, tok, _ = load_checkpoint(zoo_path("zoo:quickstart-rotary"))
        model.set_attention(build_attention(attention))
        name = "niah"
    cls = tasks.get(name)
    task = cls(cls.Config(lengths=[length], depths=[0.5], samples=1), seed=0)
    sample = task.cell_samples(task.cells()[0], tok, 1)
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            got = score_batch(model, task, sample, tok, mode=mode, capture=capture)
            best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "captured": "attention" in got[0].meta}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gguf", help="a GGUF file (default: lceval's quickstart reference model)")
    ap.add_argument("--mode", default="auto", choices=["auto", "generate"])
    ap.add_argument("--attention", default="flash")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child measurement: 'length,capture'
    args = ap.parse_args()
    if args.one:
        length, capture = args.one.split(",")
        print(json.dumps(measure(int(length), capture == "1", args.reps, args.gguf, args.mode, args.attention)))
        return
    model = args.gguf or "the quickstart reference model"
    print(f"capture cost: {model}, {args.attention}, answer mode {args.mode}, best of {args.reps}, "
          f"{os.cpu_count()} cores")
    print(f"{'tokens':>7} {'plain s':>8} {'capture s':>9} {'time x':>7} {'plain MB':>9} {'capture MB':>10} {'mem x':>6}")
    for length in args.lengths:
        got = {}
        for capture in (False, True):
            cmd = [sys.executable, __file__, "--one", f"{length},{int(capture)}", "--reps", str(args.reps),
                   "--mode", args.mode, "--attention", args.attention] + (["--gguf", args.gguf] if args.gguf else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got[capture] = json.loads(out)
        assert got[True]["captured"] and not got[False]["captured"]
        p, c = got[False], got[True]
        print(f"{length:>7} {p['seconds']:>8.2f} {c['seconds']:>9.2f} {c['seconds'] / p['seconds']:>7.3f} "
              f"{p['peak_mb']:>9.0f} {c['peak_mb']:>10.0f} {c['peak_mb'] / p['peak_mb']:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
