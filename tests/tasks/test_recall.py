"""induction and mqar: placements, labels, the curriculum, and label_accuracy scoring end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lceval import metrics
from lceval.cli import main
from lceval.scoring import score_batch
from lceval.store import read_rows
from lceval.tasks.recall import TRIGGER, Induction, InductionConfig, Mqar, MqarConfig
from lceval.tokenizer import word_level

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True)
def oracle_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    sys.modules.pop("induction_oracle", None)


def test_label_accuracy_by_hand():
    assert metrics.label_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert metrics.label_accuracy([5], [5]) == 1.0
    with pytest.raises(ValueError):
        metrics.label_accuracy([], [])


def test_induction_places_trigger_and_target_at_the_depth():
    task = Induction(InductionConfig(lengths=[100], depths=[0.0, 0.5, 1.0], samples=3), seed=1)
    tok = word_level(task.vocabulary())
    trig = tok.piece(TRIGGER)[0]
    for s in task.samples(tok):
        at = s.meta["trigger_offset"]
        assert len(s.input_ids) == 100 and s.input_ids.count(trig) == 2 and s.input_ids[at] == trig
        assert s.input_ids[-1] == trig and s.labels == [s.input_ids[at + 1]] and s.label_positions == [99]
        assert s.meta["distance"] == 99 - at
        expected = task.config.min_offset + round(s.meta["depth"] * (100 - 3 - task.config.min_offset))
        assert at == expected


def test_induction_repeat_training_examples_are_solved_by_copying_one_half_back():
    task = Induction(InductionConfig(train_repeats=0.5), seed=0)
    tok = word_level(task.vocabulary())
    trig = tok.piece(TRIGGER)[0]
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(200):
        ex = task.training_example(rng, 64, tok)
        assert len(ex.ids) <= 64 and ex.labels == [ex.ids[p + 1] for p in ex.label_positions]
        if trig in ex.ids:  # the trigger form: one label, the token after the first trigger
            assert ex.labels == [ex.ids[ex.ids.index(trig) + 1]]
            kinds.append("trigger")
        else:  # the repeat form: every label is the token one half earlier (an induction head's answer)
            half = len(ex.ids) // 2
            assert ex.ids[:half] == ex.ids[half:] and len(ex.labels) == half - 1
            assert all(ex.ids[p + 1 - half] == label for p, label in zip(ex.label_positions, ex.labels, strict=True))
            kinds.append("repeat")
    assert 70 < kinds.count("repeat") < 130  # about half, as configured
    plain = Induction(InductionConfig(), seed=0)  # the default keeps the trigger form only
    assert all(trig in plain.training_example(rng, 64, tok).ids for _ in range(50))


def test_mqar_repeat_training_examples_use_keys_and_values_and_copy_one_half_back():
    task = Mqar(MqarConfig(train_repeats=0.25, train_pairs=8), seed=0)
    tok = word_level(task.vocabulary())
    noise = {tok.piece(f"n{i:02d}")[0] for i in range(task.config.noise)}
    rng = np.random.default_rng(0)
    repeats = 0
    for _ in range(400):
        ex = task.training_example(rng, 64, tok)
        half = len(ex.ids) // 2
        if not noise & set(ex.ids) and ex.ids[:half] == ex.ids[half:] and len(ex.labels) == half - 1:
            assert all(ex.ids[p + 1 - half] == label for p, label in zip(ex.label_positions, ex.labels, strict=True))
            repeats += 1
        else:  # the curriculum form: the queries at the end, each labelled with its pair's value
            assert len(ex.ids) == 64 and ex.label_positions[-1] == 62
    assert 70 < repeats < 130  # about a quarter, as configured


def test_mqar_queries_are_labelled_with_their_pairs_values():
    task = Mqar(MqarConfig(lengths=[96], depths=[0.0, 1.0], samples=4, pairs=6, queries=4), seed=2)
    tok = word_level(task.vocabulary())
    for s in task.samples(tok):
        ids = s.input_ids
        start = s.meta["block_offset"]
        block = dict(zip(ids[start:start + 12:2], ids[start + 1:start + 12:2], strict=True))
        assert len(ids) == 96 and len(s.labels) == 4 and s.label_positions == [88, 90, 92, 94]
        assert all(block[ids[p]] == lab == ids[p + 1] for p, lab in zip(s.label_positions, s.labels, strict=True))
        assert [tok.decode([t]).strip() for t in s.labels] == s.references
        if s.meta["depth"] == 1.0:
            assert start + 12 == 88  # the pairs sit right before the queries
        else:
            assert start == 0
        assert s.meta["distance"] == 88 - start


def test_mqar_curriculum_draws_pair_counts():
    task = Mqar(MqarConfig(train_pairs=8), seed=0)
    tok = word_level(task.vocabulary())
    rng = np.random.default_rng(0)
    counts = {len(task.training_example(rng, 64, tok).labels) for _ in range(200)}
    assert counts == set(range(1, 9))


def test_mqar_too_short_is_a_clear_error():
    task = Mqar(MqarConfig(lengths=[20], pairs=8), seed=0)
    with pytest.raises(Exception, match="cannot hold 8 pairs"):
        task.samples(word_level(task.vocabulary()))


@pytest.mark.parametrize("name,cls,cfg", [("induction", Induction, InductionConfig(lengths=[80], samples=4)),
                                          ("mqar", Mqar, MqarConfig(lengths=[80], samples=4))])
def test_score_batch_reads_every_labelled_position(name, cls, cfg):
    from induction_oracle import build

    good, bad = build(name), build(name, copy=True)
    task = cls(cfg, seed=0)
    samples = task.samples(good.tokenizer)
    by_len = [s for s in samples if len(s.input_ids) == 80]
    assert [r.score for r in score_batch(good.model, task, by_len, good.tokenizer)] == [1.0] * len(by_len)
    scored = score_batch(bad.model, task, by_len, bad.tokenizer)
    assert all(r.score < 1.0 and r.mode == "teacher_forcing" for r in scored)


@pytest.mark.parametrize("task", ["induction", "mqar"])
def test_run_end_to_end_with_a_module(task, write_config, tmp_path):
    cfg = {"run": {"name": "recall", "seed": 0, "batch_size": 4},
           "models": {"oracle": {"type": "module", "factory": "induction_oracle:build", "options": {"task": task}},
                      "copier": {"type": "module", "factory": "induction_oracle:build",
                                 "options": {"task": task, "copy": True}}},
           "pairings": [{"model": ["oracle", "copier"], "attention": "full"}],
           "tasks": {task: {"lengths": [64, 128], "depths": [0.0, 1.0], "samples": 3}}}
    path = write_config(cfg)
    for _ in range(2):  # the second run reads the samples back from the dataset cache
        out = tmp_path / f"r{_}"
        res = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--no-progress"])
        assert res.exit_code == 0, res.output
        rows = read_rows(out)
        assert {r["score"] for r in rows if r["model"] == "oracle"} == {1.0}
        assert all(r["score"] < 1.0 for r in rows if r["model"] == "copier")
        assert {r["metric"] for r in rows} == {"label_accuracy"}


def test_a_model_no_pairing_uses_is_not_checked_against_the_tasks(quickstart_rotary, write_config, tmp_path):
    """The quickstart model's tokenizer lacks mqar's words; defined but unused, it must not stop the run."""
    cfg = {"run": {"name": "recall", "seed": 0},
           "models": {"oracle": {"type": "module", "factory": "induction_oracle:build"},
                      "unused": {"type": "reference", "checkpoint": str(quickstart_rotary)}},
           "pairings": [{"model": "oracle", "attention": "full"}],
           "tasks": {"mqar": {"lengths": [64], "depths": [0.5], "samples": 2}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg["pairings"].append({"model": "unused", "attention": "full"})  # used, it is refused with the reason
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r2"), "--no-progress"])
    assert res.exit_code == 2 and "cannot represent" in res.output


def test_pairings_can_run_a_subset_of_the_tasks(write_config, tmp_path):
    """An induction model and an mqar model in one config: each pairing runs only its own task (the other's words
    are not in its tokenizer, so running it there would be refused), and a task name that is not in the config is a
    config error naming the pairing."""
    cfg = {"run": {"name": "subset", "seed": 0, "batch_size": 4},
           "models": {"ind": {"type": "module", "factory": "induction_oracle:build", "options": {"task": "induction"}},
                      "mq": {"type": "module", "factory": "induction_oracle:build", "options": {"task": "mqar"}}},
           "pairings": [{"model": "ind", "attention": "full", "tasks": ["induction"]},
                        {"model": "mq", "attention": ["full", "flash"], "tasks": ["mqar"]}],
           "tasks": {"induction": {"lengths": [64], "depths": [0.5], "samples": 3},
                     "mqar": {"lengths": [64, 128], "depths": [0.5], "samples": 2}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert sorted((r["pairing"], r["task"]) for r in rows) == sorted(
        [("ind/full", "induction")] * 3 + [("mq/full", "mqar")] * 4 + [("mq/flash", "mqar")] * 4)
    assert {r["score"] for r in rows} == {1.0}
    cfg["pairings"][0]["tasks"] = ["niah"]
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r2"), "--no-progress"])
    assert res.exit_code == 2 and "pairings[0].tasks: 'niah' is not one of the config's tasks (induction, mqar)" \
        in res.output


def test_pairings_can_run_a_subset_of_the_lengths_and_depths(write_config, tmp_path):
    """`lengths` and `depths` on a pairing keep it to those cells of its tasks (an expensive pairing at the long
    lengths only), the dry run counts only those, and a value no task of the pairing has is a config error."""
    cfg = {"run": {"name": "cells", "seed": 0, "batch_size": 4},
           "models": {"mq": {"type": "module", "factory": "induction_oracle:build", "options": {"task": "mqar"}}},
           "pairings": [{"model": "mq", "attention": "full"},
                        {"model": "mq", "attention": "flash", "lengths": [128], "depths": [0.25, 0.75]}],
           "tasks": {"mqar": {"lengths": [64, 128], "depths": [0.25, 0.5, 0.75], "samples": 2}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 0 and "samples to score: 16" in res.output, res.output  # 12 + 4
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    flash = sorted((r["context_length"], r["meta"]["depth"]) for r in rows if r["pairing"] == "mq/flash")
    assert flash == [(128, 0.25), (128, 0.25), (128, 0.75), (128, 0.75)]
    assert sum(r["pairing"] == "mq/full" for r in rows) == 12
    for field, value, message in (("lengths", [256], "pairings[1].lengths[0]: 256 is not a context length of the "
                                   "tasks this pairing runs (mqar: 64, 128)"),
                                  ("depths", [0.3], "pairings[1].depths[0]: 0.3 is not a depth of the tasks")):
        bad = {**cfg, "pairings": [cfg["pairings"][0], {**cfg["pairings"][1], field: value}]}
        res = CliRunner().invoke(main, ["run", str(write_config(bad)), "--out", str(tmp_path / "r2"), "--dry-run"])
        assert res.exit_code == 2 and message in res.output, res.output


def test_a_pairing_can_run_fewer_samples_per_cell(write_config, tmp_path):
    """`samples` on a pairing runs the first N samples of each cell (the prompts every other pairing sees first),
    for an expensive pairing; the dry run counts only those, and the cap never exceeds the task's own count."""
    cfg = {"run": {"name": "cap", "seed": 0, "batch_size": 4},
           "models": {"mq": {"type": "module", "factory": "induction_oracle:build", "options": {"task": "mqar"}}},
           "pairings": [{"model": "mq", "attention": "full"},
                        {"model": "mq", "attention": "flash", "samples": 1, "lengths": [128]},
                        {"model": "mq", "attention": {"name": "sliding_window", "window": 32}, "samples": 9}],
           "tasks": {"mqar": {"lengths": [64, 128], "depths": [0.25, 0.75], "samples": 3}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 0 and "samples to score: 26" in res.output, res.output  # 12 + 2 + 12
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--dry-run",
                                    "--limit", "2"])
    assert "samples to score: 18" in res.output, res.output  # 8 + 2 + 8
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    full = {r["sample_id"] for r in rows if r["pairing"] == "mq/full"}
    flash = sorted(r["sample_id"] for r in rows if r["pairing"] == "mq/flash")
    assert len(full) == 12 and len(flash) == 2 and set(flash) <= full
    assert all(r["meta"]["sample"] == 0 and r["context_length"] == 128 for r in rows if r["pairing"] == "mq/flash")
    assert sum("sliding_window" in r["pairing"] for r in rows) == 12
    bad = {**cfg, "pairings": [{"model": "mq", "attention": "full", "samples": 0}]}
    res = CliRunner().invoke(main, ["run", str(write_config(bad)), "--out", str(tmp_path / "r2"), "--dry-run"])
    assert res.exit_code == 2 and "pairings[0].samples" in res.output, res.output
