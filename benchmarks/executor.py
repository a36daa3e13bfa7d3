"""The same grid with run.executor local and ray (2 local workers): wall time of each, their ratio, and Ray's
overhead per unit.

    python benchmarks/executor.py [--lengths 128 256 512 1024] [--samples 10] [--workers 2]

The grid is the quickstart model (shipped) on the needle task with full and flash attention. Local runs
with all the machine's cores as torch threads; Ray runs `--workers` actors of one core each. Both time
``Runner.run`` (the report is not written); the dataset cache is filled first so neither pays for it.
Ray's overhead per unit is the mean round trip of a no-op remote call that carries one real unit's
samples, measured on the same Ray instance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def grid(out: Path, executor: str, lengths, samples, workers) -> dict:
    return {"run": {"name": "bench", "seed": 0, "batch_size": 4, "executor": executor,
                    "ray": {"address": "local", "max_workers": workers, "num_cpus_per_worker": 1}},
            "models": {"m": {"type": "reference", "checkpoint": "zoo:quickstart-rotary"}},
            "pairings": [{"model": "m", "attention": ["full", "flash"]}],
            "tasks": {"niah": {"lengths": lengths, "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "samples": samples}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import ray

    from lceval.executors import executor_for
    from lceval.resolve import resolve
    from lceval.runner import Runner
    from lceval.store import ResultsStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("LCEVAL_CACHE", str(root / "cache"))
        times, units = {}, 0
        for executor in ("local", "ray"):
            runner = Runner(resolve(grid(root, executor, args.lengths, args.samples, args.workers), root),
                            progress=False)
            runner.adapter("m")
            for name in runner.tasks:  # fill the dataset cache outside the timed region
                runner.samples(name, runner.adapter("m"))
            t0 = time.perf_counter()
            summary = runner.run(root / executor, executor_for(runner.config.run))
            times[executor] = time.perf_counter() - t0
            if executor == "local":
                with ResultsStore(root / "plan") as store:
                    units = sum(len(runner.plan(p, store)) for p in runner.resolved.pairings)
                    sample_unit = runner.plan(runner.resolved.pairings[0], store)[-1]
            print(f"{executor:>5}: {summary.written} rows in {times[executor]:7.2f} s", flush=True)

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)

        @ray.remote
        def noop(unit):
            return len(unit.batch)

        ray.get(noop.remote(sample_unit))
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            ray.get(noop.remote(sample_unit))
        per_unit = (time.perf_counter() - t0) / n * 1e3
        ray.shutdown()
    print(f"{units} units ({args.lengths}, {args.samples} samples x 5 depths, full + flash, batch 4), "
          f"{os.cpu_count()} cores")
    print(f"local {times['local']:.2f} s, ray ({args.workers} workers) {times['ray']:.2f} s, "
          f"ratio ray/local {times['ray'] / times['local']:.2f}")
    print(f"Ray round trip per unit (no-op carrying a {len(sample_unit.batch)}-sample unit of "
          f"{len(sample_unit.batch[0].input_ids)} tokens): {per_unit:.2f} ms")


if __name__ == "__main__":
    main()
