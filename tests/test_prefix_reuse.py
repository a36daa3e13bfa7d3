"""Prompts that share a haystack share their text up to the needle; the runner computes that prefix once.

``shared_haystack`` gives every sample of a length the same haystack (as RULER and the original needle test
do); ``run.prefix_reuse`` (auto: for such tasks) computes a batch's common prefix once and continues each prompt
from the cache. The rows must be the rows of independent prefill, sample for sample, for every variant.
"""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from lceval import registry
from lceval.cli import main
from lceval.config import ReferenceSpec, validate_task_config
from lceval.generate import common_prefix
from lceval.models.adapters import ReferenceAdapter
from lceval.store import read_rows

ATTENTIONS = ["flash", {"name": "sliding_window", "window": 24}, {"name": "sparse", "block": 8, "local_blocks": 2},
              "linear"]


def _samples(checkpoint, shared: bool):
    cls = registry.tasks.get("niah_single_1")
    task = cls(validate_task_config(cls, {"lengths": [128], "depths": [0.25, 1.0], "samples": 2,
                                          "shared_haystack": shared}, "t"), seed=0)
    adapter = ReferenceAdapter(ReferenceSpec(checkpoint=checkpoint), progress=False)
    adapter.prepare()
    tok = adapter.tokenizer
    return task.samples(tok)


def test_a_shared_haystack_makes_prompts_of_one_length_share_text_up_to_the_needle(cache_dir):
    for shared in (False, True):
        samples = _samples("zoo:ruler-mixture", shared)
        ids = torch.tensor([s.input_ids for s in samples])
        first_needle = min(min(s.meta["needle_offsets"]) for s in samples)
        if shared:  # everything before the earliest needle is common (the instruction and the haystack so far)
            assert common_prefix(ids) >= first_needle > 16
        else:  # each sample's own haystack: only the instruction is common
            assert common_prefix(ids) < first_needle


def test_rows_with_prefix_reuse_equal_rows_without(cache_dir, write_config, tmp_path):
    """Generation on the shipped RULER model, four variants, capture on: reuse changes prefill_tokens only."""
    def run(reuse: str, out):
        cfg = {"run": {"name": "reuse", "seed": 0, "batch_size": 4, "answer": "generate", "prefix_reuse": reuse},
               "models": {"r": {"type": "reference", "checkpoint": "zoo:ruler-mixture"}},
               "pairings": [{"model": "r", "attention": ATTENTIONS}],
               "tasks": {"niah_single_1": {"lengths": [128, 256], "depths": [0.0, 0.5, 0.75, 1.0], "samples": 2,
                                           "shared_haystack": True}}}
        res = CliRunner().invoke(main, ["run", str(write_config(cfg, f"{reuse}.yaml")), "--out", str(out),
                                        "--no-progress"])
        assert res.exit_code == 0, res.output
        return {(r["pairing"], r["sample_id"]): r for r in read_rows(out)}

    on, off = run("auto", tmp_path / "on"), run("off", tmp_path / "off")
    assert on.keys() == off.keys() and len(on) == 4 * 16
    drop = ("run_id", "prefill_tokens")
    for key in on:
        a = json.dumps({k: v for k, v in on[key].items() if k not in drop}, sort_keys=True)
        b = json.dumps({k: v for k, v in off[key].items() if k not in drop}, sort_keys=True)
        assert a == b, key
    assert {r["prefill_tokens"] == r["context_length"] for r in off.values()} == {True}
    saved = {p: sum(r["context_length"] - r["prefill_tokens"] for (q, _), r in on.items() if q == p)
             for p in {k[0] for k in on}}
    assert saved["r/linear"] == 0  # a recurrent state cannot be read back by the attention capture: not reused
    assert all(saved[p] > 0.2 * 16 * 192 for p in saved if p != "r/linear"), saved  # over 20% of the tokens
    assert any(r["score"] == 1.0 for r in on.values()) and any(r["diagnosis"] for r in on.values())
