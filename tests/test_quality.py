"""The trained quickstart model retrieves the needle (measured, not assumed)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import small_config
from lceval.cli import main
from lceval.store import read_rows


def test_quickstart_model_retrieves_at_training_length(quickstart_rotary, write_config, tmp_path):
    card = json.loads((quickstart_rotary / "card.json").read_text())
    L = card["training_length"]
    data = small_config(quickstart_rotary)
    data["run"]["seed"] = 12345  # fresh samples, not the ones the trainer measured on
    data["pairings"] = [{"model": "m", "attention": "full"}]
    data["tasks"] = {"niah": {"lengths": [L], "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "samples": 40}}
    res = CliRunner().invoke(main, ["run", str(write_config(data)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 200 and all(r["status"] == "ok" for r in rows)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert accuracy >= 0.95, accuracy
    assert card["measured"]["accuracy"] >= 0.95
