"""Third-party plugins register through entry points and run via `lceval run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import small_config
from lceval.store import read_rows

PLUGIN = '''
from lceval.task import Sample, Task, TaskConfig
from lceval.tasks.niah import KEYS, NEEDLE, QUESTION


class RecallConfig(TaskConfig):
    pairs: int = 3
    samples: int = 4


class ShortRecall(Task):
    """A few needles back to back, then a question: no haystack at all."""

    name = "shortrecall"
    Config = RecallConfig

    def vocabulary(self):
        return []

    def cells(self):
        return [{"context_length": None, "pairs": self.config.pairs}]

    def samples_per_cell(self):
        return self.config.samples

    def cell_samples(self, cell, tokenizer, n):
        out = []
        for i in range(n):
            rng = self.rng(cell["pairs"], i)
            keys = [KEYS[j] for j in rng.choice(len(KEYS), cell["pairs"], replace=False)]
            values = [str(100 + int(v)) for v in rng.integers(0, 100, cell["pairs"])]
            ids = tokenizer.prefix()
            for k, v in zip(keys, values):
                ids = ids + tokenizer.piece(NEEDLE.format(key=k, value=v))
            ids = ids + tokenizer.piece(QUESTION.format(key=keys[0]))
            out.append(Sample(id=f"s{i}", input_ids=ids, answer_ids=tokenizer.piece(values[0]),
                              meta={"context_length": len(ids), "depth": 0.0, "needle_offset": 1,
                                    "distance": len(ids) - 1}))
        return out
'''


def test_entry_point_task_runs(quickstart_rotary, write_config, tmp_path):
    site = tmp_path / "site"
    pkg = site / "lceval_demo_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "lceval_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lceval-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lceval.tasks]\nshortrecall = lceval_demo_plugin:ShortRecall\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    listed = subprocess.run([sys.executable, "-m", "lceval.cli", "list"], env=env, capture_output=True, text=True)
    assert "shortrecall" in listed.stdout.splitlines()[0].split(": ")[1].split(", ")

    data = small_config(quickstart_rotary)
    data["tasks"] = {"shortrecall": {"pairs": 3, "samples": 4}}
    cfg = write_config(data)
    res = subprocess.run([sys.executable, "-m", "lceval.cli", "run", str(cfg), "--out", str(tmp_path / "r"),
                          "--no-progress"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 2 * 4 and {r["task"] for r in rows} == {"shortrecall"}
    assert all(r["status"] == "ok" for r in rows)
    by_attention = {}
    for r in rows:
        by_attention.setdefault(r["attention"], {})[r["sample_id"]] = (r["correct"], round(r["answer_logprob"], 4))
    assert by_attention["full"] == by_attention["flash"]

    dry = subprocess.run([sys.executable, "-m", "lceval.cli", "run", str(cfg), "--dry-run"], env=env,
                         capture_output=True, text=True)
    assert dry.returncode == 0 and "samples to score: 8" in dry.stdout, dry.stderr  # cells without a context length

    bad = subprocess.run([sys.executable, "-m", "lceval.cli", "run", str(cfg), "--dry-run",
                          "--set", "tasks.shortrecall.pairs=many"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "tasks.shortrecall.pairs" in bad.stderr
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert "shortrecall" in manifest["config"]["tasks"]
