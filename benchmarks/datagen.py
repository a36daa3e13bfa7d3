"""Sample generation speed per task, cold and from the dataset cache.

    python benchmarks/datagen.py                  # 4k, 32k and 128k tokens, 20 samples per task
    python benchmarks/datagen.py --suite 100      # also: the 13 tasks x 100 samples at 32k (targets: < 60 s, < 5 s)

Uses the reference word-level tokenizer over each task's vocabulary and a fresh
cache folder. The 13 tasks are RULER's: eight niah presets, vt, cwe, fwe, and qa
over the SQuAD and HotpotQA layouts (small made-up fixtures from tests/fixtures).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
NIAH = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery"]


def suite() -> list[tuple[str, str, dict]]:
    """(label, registered task, extra config) for RULER's 13 tasks."""
    out = [(n, n, {}) for n in NIAH] + [("vt", "vt", {}), ("cwe", "cwe", {"pool": 8192}), ("fwe", "fwe", {})]
    out += [("qa_1 (squad)", "qa", {"path": str(FIXTURES / "qa_squad.json")}),
            ("qa_2 (hotpotqa)", "qa", {"path": str(FIXTURES / "qa_hotpot.json")})]
    return out


def build(task_name: str, extra: dict, length: int, samples: int):
    from lceval import registry
    from lceval.config import validate_task_config

    cls = registry.tasks.get(task_name)
    cfg = {"lengths": [length], "samples": samples, **extra}
    if "depths" in cls.Config.model_fields:
        cfg["depths"] = [0.5]
    return cls(validate_task_config(cls, cfg, task_name), seed=0)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--suite", type=int, default=0, help="also time the 13 tasks x N samples at 32k tokens")
    args = ap.parse_args()
    os.environ["LCEVAL_CACHE"] = tempfile.mkdtemp(prefix="lceval-datagen-")
    from lceval.dataset import cached_samples
    from lceval.tokenizer import word_level

    print("| task | length | samples | cold samples/s | cached samples/s |")
    print("|---|---|---|---|---|")
    for label, name, extra in suite():
        for length in args.lengths:
            task = build(name, extra, length, args.samples)
            tok = word_level(task.vocabulary())
            tok.fingerprint()
            (got, _), cold = timed(lambda: cached_samples(task, tok))
            (again, hit), warm = timed(lambda: cached_samples(task, tok))
            assert hit and [s.input_ids for s in again] == [s.input_ids for s in got]
            n = len(got)
            print(f"| {label} | {length:,} | {n} | {n / cold:,.1f} | {n / warm:,.1f} |", flush=True)
    if args.suite:
        tasks = []
        for _label, name, extra in suite():
            task = build(name, extra, 32768, args.suite)
            tok = word_level(task.vocabulary())
            tok.fingerprint()
            tasks.append((task, tok))
        os.environ["LCEVAL_CACHE"] = tempfile.mkdtemp(prefix="lceval-datagen-suite-")
        _, cold = timed(lambda: [cached_samples(t, k) for t, k in tasks])
        res, warm = timed(lambda: [cached_samples(t, k) for t, k in tasks])
        n = sum(len(s) for s, _ in res)
        assert all(hit for _, hit in res)
        print(f"\n13 tasks x {args.suite} samples at 32,768 tokens ({n} samples): cold {cold:.1f} s "
              f"(target < 60 s), cached {warm:.1f} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
