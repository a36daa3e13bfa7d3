"""Malformed configs: exit code 2, one line naming the key path, no traceback."""

from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner

from lceval.cli import main
from lceval.config import apply_overrides

BASE = {
    "run": {"name": "t", "seed": 0},
    "models": {"m": {"type": "reference", "train": {"position": "rotary", "steps": 10}}},
    "pairings": [{"model": "m", "attention": "full"}],
    "tasks": {"niah": {"lengths": [64], "depths": [0.5], "samples": 1}},
}


def mutate(path: str, value):
    cfg = copy.deepcopy(BASE)
    if value is DELETE:
        *head, last = path.split(".")
        node = cfg
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        del node[last]
        return cfg
    return apply_overrides(cfg, [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


DELETE = object()

CASES = [
    # (mutation path, value, key path expected in the message, words expected)
    ("runn", {"name": "x"}, "runn: unknown key", "allowed keys: run, models, pairings, tasks, report"),
    ("tasks.niah.depths", [0.5, 1.5], "tasks.niah.depths[1]", "less than or equal to 1"),
    ("tasks.niah.lengths", [-5], "tasks.niah.lengths[0]", "greater than 0"),
    ("tasks.niah.samples", "many", "tasks.niah.samples", "integer"),
    ("tasks.niah.depth", [0.5], "tasks.niah.depth: unknown key", "allowed keys: lengths, depths"),
    ("tasks.needle", {}, "tasks.needle", "unknown tasks plugin 'needle'; registered: cwe, fwe, niah,"),
    ("pairings.0.model", "nope", "pairings[0].model", "defined models: m"),
    ("pairings.0.attention", "fast", "pairings[0].attention.name", "registered: "),
    ("models.m.train.position", "cosine", "models.m.train.position", "registered: alibi"),
    ("models.m.train.steps", 0, "models.m.train.steps", "greater than 0"),
    ("models.m.train.n_heads", 3, "models.m.train.n_heads", "must divide d_model"),
    ("models.m.type", "gpt9", "models.m.type", "unknown models plugin 'gpt9'"),
    ("models.m.checkpoint", "/nonexistent/ckpt", "models.m", "exactly one of 'checkpoint' or 'train'"),
    ("run.batch_size", 0, "run.batch_size", "greater than 0"),
    ("run.device", "tpu", "run.device", "'auto', 'cpu' or 'cuda'"),
    ("report.threshold", 150, "report.threshold", "less than or equal to 100"),
    ("pairings", [], "pairings", "at least 1 item"),
    ("models", DELETE, "models", "required key is missing"),
]


@pytest.mark.parametrize("path,value,where,words", CASES, ids=[c[2].split(":")[0] + "-" + str(i) for i, c in enumerate(CASES)])
def test_malformed_config_exit_2_names_key(write_config, path, value, where, words):
    cfg = write_config(mutate(path, value))
    res = CliRunner().invoke(main, ["run", str(cfg), "--dry-run"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert where in err and words in err, err
    assert "Traceback" not in res.output


def test_missing_checkpoint_directory(write_config, tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["models"]["m"] = {"type": "reference", "checkpoint": str(tmp_path / "absent")}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--dry-run"])
    assert res.exit_code == 2
    assert "models.m.checkpoint: no reference checkpoint" in res.stderr


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    res = CliRunner().invoke(main, ["run", str(bad), "--dry-run"])
    assert res.exit_code == 2 and "not valid YAML" in res.stderr
    res = CliRunner().invoke(main, ["run", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_set_override_applies_and_validates(write_config):
    cfg = write_config(BASE)
    res = CliRunner().invoke(main, ["run", str(cfg), "--dry-run", "--set", "tasks.niah.samples=7",
                                    "--set", "tasks.niah.lengths=[64, 128]"])
    assert res.exit_code == 0, res.output
    assert "samples to score: 14" in res.output  # 1 pairing x 2 lengths x 1 depth x 7
    res = CliRunner().invoke(main, ["run", str(cfg), "--dry-run", "--set", "tasks.niah.depths=[2]"])
    assert res.exit_code == 2 and "tasks.niah.depths[0]" in res.stderr
    res = CliRunner().invoke(main, ["run", str(cfg), "--dry-run", "--set", "novalue"])
    assert res.exit_code == 2 and "expected key.path=value" in res.stderr


def test_dry_run_counts_cross_product(write_config):
    cfg = copy.deepcopy(BASE)
    cfg["pairings"] = [{"model": "m", "attention": ["full", "flash"]}]
    cfg["tasks"]["niah"] = {"lengths": [64, 128, 256], "depths": [0, 0.5], "samples": 4}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--dry-run", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "m/full, m/flash" in res.output
    assert "samples to score: 24" in res.output  # 2 pairings x 6 cells x min(4, limit 2)
    assert "prompt tokens to process: 3,584" in res.output  # 2 x 2 x 2 x (64 + 128 + 256)
