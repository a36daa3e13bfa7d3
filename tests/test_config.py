"""Malformed configs: exit code 2, one line naming the key path, no traceback."""

from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner

from lceval.cli import main
from lceval.errors import UserError
from lceval.resolve import apply_overrides

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
    ("tasks.needle", {}, "tasks.needle", "unknown tasks plugin 'needle'; registered: alignment, cwe, fwe, induction,"),
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
    # issue 11: every value a run would refuse is refused up front, with its key path
    ("tasks.niah.lengths", [True], "tasks.niah.lengths", "numbers, not true/false"),
    ("tasks.niah.lengths", [10**30], "tasks.niah.lengths[0]", "less than or equal to 16777216"),
    ("tasks.niah.samples", 10**12, "tasks.niah.samples", "less than or equal to 1000000"),
    ("tasks.niah.lengths", [64, 128, 64], "tasks.niah.lengths", "lists 64 more than once"),
    ("tasks.niah.depths", [0.5, 0.5000001], "tasks.niah.depths", "too close to tell apart"),
    ("run.name", "", "run.name", "should match pattern"),
    ("run.name", "../../x", "run.name", "should match pattern"),
    ("run.name", "..", "run.name", "not '.' or '..'"),
    ("models.m.train.n_kv_heads", 3, "models.m.train.n_kv_heads", "must divide n_heads (2)"),
    ("models.m.train.max_length", 64, "models.m.train.max_length", "must cover the training length (128)"),
    ("models.m.params", {"x": 1}, "models.m.params: unknown key", "allowed keys: type, dtype, device, checkpoint, train"),
    ("pairings.0", {"model": "m", "attention": ["full", "flash"], "label": "mine"}, "pairings[0].label",
     "cannot name the 2 pairings"),
    ("pairings.0.attention", {"name": "sparse", "block": 4096}, "pairings[0].attention", "less than or equal to 1024"),
    ("models.m.train.tasks", {"vt": 1, "nope": 1}, "models.m.train.tasks.nope", "unknown tasks plugin 'nope'"),
    ("tasks.vt", {"lengths": [64], "hops": 0}, "tasks.vt.hops", "greater than 0"),
    ("tasks.cwe", {"freq_common": 2, "freq_uncommon": 3}, "tasks.cwe", "freq_common must be larger"),
    ("tasks.qa", {"lengths": [64]}, "tasks.qa.path", "required key is missing"),
    ("run.answer", "beam", "run.answer", "'auto', 'generate' or 'full'"),
    ("run.threads", 0, "run.threads", "greater than 0"),
    ("tasks.vt", {"lengths": [64], "template": "no place for the text"}, "tasks.vt.template", "{context} exactly once"),
    ("models.m", {"type": "hf", "path": "x", "rope": {"theta": float("inf")}}, "models.m.rope.theta", "finite number"),
    ("models.m", {"type": "hf", "path": "x", "rope": {"scaling": "yarn", "factor": float("inf")}},
     "models.m.rope.factor", "finite number"),
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


def test_bad_files_and_values_are_one_line_errors(tmp_path, write_config):
    def err(args):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        return res.stderr

    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)))
    assert "not a text file" in err(["run", str(garbage), "--dry-run"])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run: {name: caf\xe9}\n".encode("latin-1"))
    assert "not UTF-8" in err(["run", str(latin), "--dry-run"])
    assert "is a directory" in err(["run", str(tmp_path), "--dry-run"])
    cfg = write_config(BASE)
    assert "not valid YAML" in err(["run", str(cfg), "--dry-run", "--set", "tasks.niah.lengths=[64"])
    for content in [b"", b"\x00\x01garbage", b"[]", b'{"format": 1}', b'{"architecture": 5}']:
        ckpt = tmp_path / f"ckpt{len(content)}"
        ckpt.mkdir()
        for name in ("model.safetensors", "tokenizer.json"):
            (ckpt / name).write_bytes(b"x")
        (ckpt / "card.json").write_bytes(content)
        data = copy.deepcopy(BASE)
        data["models"]["m"] = {"type": "reference", "checkpoint": str(ckpt)}
        assert "card.json" in err(["run", str(write_config(data)), "--dry-run"])


def test_dry_run_refuses_what_the_run_would(write_config):
    def err(data):
        res = CliRunner().invoke(main, ["run", str(write_config(data)), "--dry-run"])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
        return res.stderr

    short = mutate("tasks.niah.lengths", [10, 64])
    assert "tasks.niah.lengths: 10 tokens cannot hold the needle" in err(short)
    tiny_train = mutate("models.m.train.train_length", 12)
    assert "models.m.train.train_length: too short for task niah" in err(tiny_train)


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


def test_lengths_option_keeps_only_those_lengths(write_config):
    """--lengths cuts tasks and pairings to the given lengths; a pairing left with none is dropped."""
    cfg = copy.deepcopy(BASE)
    cfg["pairings"] = [{"model": "m", "attention": "full"},
                       {"model": "m", "attention": "flash", "lengths": [128], "depths": [0.5]}]
    cfg["tasks"]["niah"] = {"lengths": [64, 128, 256], "depths": [0, 0.5], "samples": 2}
    path = str(write_config(cfg))
    res = CliRunner().invoke(main, ["run", path, "--dry-run"])
    assert res.exit_code == 0 and "samples to score: 14" in res.output, res.output  # 12 + 2
    res = CliRunner().invoke(main, ["run", path, "--dry-run", "--lengths", "64,256"])
    assert res.exit_code == 0, res.output
    assert "pairings: 1 (m/full)" in res.output and "samples to score: 8" in res.output  # 2 lengths x 2 x 2
    res = CliRunner().invoke(main, ["run", path, "--dry-run", "--lengths", "128"])
    assert "pairings: 2 " in res.output and "samples to score: 6" in res.output  # 4 + 2


WEIRD = [None, True, False, 0, -1, 1.5, 10**30, "", "x" * 300, "../..", [], {}, [True], [10**30], [0.5, 0.5],
         {"name": "sparse", "block": 10**9}, "\x00", "caf\u00e9", [[1]], {"a": {"b": {}}}]
PATHS = ["run.name", "run.seed", "run.batch_size", "run.device", "run.memory_budget_mb", "run.answer", "run.threads",
         "models.m.type", "models.m.train", "models.m.train.position", "models.m.train.steps",
         "models.m.train.train_length", "models.m.train.max_length", "models.m.train.n_heads",
         "models.m.train.n_kv_heads", "models.m.train.tasks", "models.m.train.attention", "models.m.checkpoint",
         "pairings", "pairings.0", "pairings.0.model", "pairings.0.attention", "pairings.0.label",
         "pairings.0.tasks", "pairings.0.lengths", "pairings.0.depths", "pairings.0.samples", "tasks",
         "tasks.niah", "tasks.niah.lengths", "tasks.niah.depths", "tasks.niah.samples", "tasks.niah.haystack",
         "tasks.vt", "tasks.cwe", "tasks.niah_multikey_1", "report", "report.threshold", "report.distance_bins"]


def test_config_fuzzer_never_tracebacks(write_config):
    """Seeded random mutations: every outcome is a dry run (exit 0) or one clean line (exit 2)."""
    import random

    rng = random.Random(20261122)
    outcomes = {0: 0, 2: 0}
    for i in range(120):
        cfg = copy.deepcopy(BASE)
        for _ in range(rng.randint(1, 3)):
            value = yaml.safe_dump(rng.choice(WEIRD), default_flow_style=True).strip()
            try:
                cfg = apply_overrides(cfg, [f"{rng.choice(PATHS)}={value}"])
            except UserError:  # the override itself may be refused (a key inside a value): a clean error too
                pass
        res = CliRunner().invoke(main, ["run", str(write_config(cfg, f"fuzz{i}.yaml")), "--dry-run"])
        assert res.exit_code in (0, 2), (cfg, res.output, res.exception)  # an unexpected exception exits 1
        assert "Traceback" not in res.output, cfg
        if res.exit_code == 2:
            assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: "), res.stderr
        outcomes[res.exit_code] += 1
    assert outcomes[2] > 60  # the mutations are mostly invalid, and every one is refused cleanly


@pytest.mark.parametrize("args,want", [
    (["--set", "run.threads=0"], "error: run.threads: input should be greater than 0 (got 0)"),
    (["--set", "=1"], "error: --set '=1': the key path has an empty part"),
    (["--set", "tasks..samples=1"], "error: --set 'tasks..samples=1': the key path has an empty part"),
    (["--limit", "0"], "error: --limit must be at least 1 (got 0)"),
    (["--lengths", "65"], "error: --lengths 65: no task of the config has these lengths (it has 64)"),
    (["--lengths", "64,x"], "error: --lengths '64,x': expected whole numbers separated by commas"),
    (["--set", "models.m={type: module, factory: 'not a ref'}"],
     "error: models.m.factory: must be package.module:callable, e.g. mypkg.models:build (got 'not a ref')"),
])
def test_messages_name_the_key_exactly_once(write_config, args, want):
    res = CliRunner().invoke(main, ["run", str(write_config(BASE)), "--dry-run", *args])
    err = res.stderr.strip()
    assert res.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith(want), err
    assert err.count("(got") <= 1 and "constrained" not in err


def _module(tmp_path, monkeypatch, name, source):
    import sys

    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


@pytest.mark.parametrize("source,options,want", [
    ("def build(:\n", {}, "models.m.factory: badfactory has a syntax error"),
    ("raise RuntimeError('no GPU here\\nreally none')\n", {}, "models.m.factory: importing badfactory raised "
                                                                 "RuntimeError: really none"),
    ("def build():\n    raise ValueError('weights not found\\nat /x')\n", {},
     "models.m.factory: badfactory:build raised ValueError: at /x"),
    ("def build(size):\n    return None\n", {"depth": 2}, "models.m.options: badfactory:build cannot be called with "
                                                           "['depth']"),
])
def test_a_broken_module_factory_is_one_line(write_config, tmp_path, monkeypatch, source, options, want):
    _module(tmp_path, monkeypatch, "badfactory", source)
    cfg = copy.deepcopy(BASE)
    cfg["models"] = {"m": {"type": "module", "factory": "badfactory:build", "options": options}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    err = res.stderr.strip()
    assert res.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {want}"), res.output
