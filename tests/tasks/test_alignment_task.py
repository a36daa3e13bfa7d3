"""The alignment task: focus labels and capture rows point at the right tokens; AER counts from captured weights
by hand; lceval run writes per-layer/head counts and links (and never the task's working data)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from lceval import metrics
from lceval.cli import main
from lceval.store import read_rows
from lceval.tasks.alignment.task import Alignment, AlignmentConfig
from lceval.tokenizer import word_level


@pytest.fixture(scope="module")
def setup():
    task = Alignment(AlignmentConfig(lengths=[96], depths=[0.0, 1.0], samples=2, layouts=["concatenated"]), seed=0)
    tok = word_level(task.vocabulary())
    return task, tok, task.samples(tok)


def test_labels_rows_and_spans_point_at_the_focus_pair(setup):
    task, tok, samples = setup
    for s in samples:
        assert len(s.input_ids) == 96
        words = [tok.decode(s.input_ids[a:b]).strip() for a, b in s.meta["_tgt"]]
        assert words == s.references  # the focus translation, word by word
        assert [s.input_ids[p + 1] for p in s.label_positions] == s.labels
        assert task.capture_rows(s) == [a - 1 for a, _ in s.meta["_tgt"]]
        start, count = s.meta["_focus"]
        src = [tok.decode(s.input_ids[a:b]).strip() for a, b in s.meta["_src"][start:start + count]]
        assert all(0 <= i < count and 0 <= j < len(words) for i, j in s.meta["possible"])
        assert src and all(w for w in src)
        assert s.meta["distance"] == s.meta["_tgt"][0][0] - s.meta["_src"][start][0] > 0


def test_aer_counts_from_captured_weights_by_hand(setup):
    task, _, samples = setup
    s = samples[0]
    start, count = s.meta["_focus"]
    src = s.meta["_src"]
    sure = {tuple(x) for x in s.meta["sure"]}
    possible = {tuple(x) for x in s.meta["possible"]}
    R, S = len(s.meta["_tgt"]), len(s.input_ids)
    weights = torch.zeros(1, 2, R, S)  # (L, H, R, S)
    gold_for = {j: i for i, j in sorted(sure)}
    for j in range(R):
        i = gold_for.get(j, 0)
        a, b = src[start + i]
        weights[0, 0, j, a:b] = 1.0  # head 0: the gold source word (word 0 where the target word has none)
        a, b = src[(start + count) % len(src)]  # head 1: a word of another sentence
        weights[0, 1, j, a:b] = 1.0
    got = task.read_capture(s, weights)
    want0 = metrics.alignment_counts({(gold_for.get(j, 0), j) for j in range(R)}, sure, possible)
    assert got["aer_counts"]["L0H0"] == want0
    assert got["aer_counts"]["L0H1"] == {"a": R, "s": len(sure), "a_and_s": 0, "a_and_p": 0}
    assert all(i == -1 for i, _ in got["links"]["L0H1"])
    assert metrics.aer(got["aer_counts"]["L0H1"])["aer"] == 1.0


def test_run_writes_counts_per_layer_and_head(write_config, tmp_path):
    recipe = {"task": "alignment", "position": "rotary", "train_length": 96, "steps": 20, "d_model": 32,
              "n_layers": 2, "n_heads": 2, "eval_samples": 4, "seed": 0}
    cfg = {"run": {"name": "align", "seed": 0, "batch_size": 4},
           "models": {"m": {"type": "reference", "train": recipe}},
           "pairings": [{"model": "m", "attention": ["full", "flash", "linear"]}],
           "tasks": {"alignment": {"lengths": [96, 160], "depths": [0.0, 1.0], "samples": 2}}}  # both layouts
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 3 * 2 * 2 * 2 * 2 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        counts = r["meta"]["aer_counts"]
        assert set(counts) == {"L0H0", "L0H1", "L1H0", "L1H1", "mean"}
        assert all(c["s"] == counts["mean"]["s"] and c["a"] == len(r["meta"]["target_words"]) for c in counts.values())
        assert not any(k.startswith("_") for k in r["meta"])  # working data stays out of the rows
        assert 0.0 <= r["score"] <= 1.0
    full = {r["sample_id"]: r["meta"]["aer_counts"] for r in rows if r["attention"] == "full"}
    assert full == {r["sample_id"]: r["meta"]["aer_counts"] for r in rows if r["attention"] == "flash"}
    import pandas as pd

    table = pd.read_csv(tmp_path / "r" / "report" / "alignment.csv")
    assert set(table["pairing"]) == {"m/full", "m/flash", "m/linear"} and set(table["n"]) == {1}  # odd samples
    assert set(table["layout"]) == {"concatenated", "interleaved"}
    report = tmp_path / "r" / "report"
    for prefix in ("heatmap_", "aer_heads_"):  # translation and per layer x head: one per pairing and layout
        assert len(list(report.glob(f"{prefix}*.png"))) == 3 * 2, prefix
    assert len([p for p in report.glob("aer_*.png") if not p.name.startswith(("aer_heads_", "aer_distance_"))]) == 6
    assert len(list(report.glob("aer_distance_*.png"))) == 2 and len(list(report.glob("attention_*.png"))) == 2
    heads = pd.read_csv(report / "alignment_heads.csv")
    assert len(heads) == 3 * 2 * 5 and heads["aer"].between(0, 1).all()
    for r in rows:  # the picture's data: weights of every target word on the focus source words, and the gold
        w = r["meta"]["focus_weights"]["mean"]
        assert len(w) == len(r["meta"]["target_words"]) and {len(x) for x in w} == {len(r["meta"]["source_words"])}
        assert all(0 <= i < len(r["meta"]["source_words"]) for i, _ in r["meta"]["sure"])
    assert "Alignment: translation accuracy and AER" in (tmp_path / "r" / "report" / "summary.md").read_text()


def test_report_picks_the_best_head_on_calibration_and_sums_counts_on_evaluation():
    from lceval.report.tables import frame
    from lceval.tasks.alignment.report import alignment_table

    def row(sample, h0, h1, mean, score):
        counts = {"L0H0": h0, "L0H1": h1, "mean": mean}
        return {"task": "alignment", "sample_id": f"s{sample}", "pairing": "m/full", "model": "m", "attention": "full",
                "context_length": 96, "status": "ok", "correct": False, "score": score,
                "meta": {"sample": sample, "layout": "concatenated", "depth": 0.5,
                         "aer_counts": {k: dict(zip(("a", "s", "a_and_s", "a_and_p"), v, strict=True))
                                        for k, v in counts.items()}}}

    rows = [row(0, (4, 4, 1, 1), (4, 4, 4, 4), (4, 4, 2, 2), 1.0),  # calibration: head L0H1 is perfect
            row(2, (4, 4, 0, 0), (4, 4, 3, 4), (4, 4, 2, 2), 1.0),
            row(1, (5, 4, 4, 5), (5, 4, 2, 3), (5, 4, 3, 3), 0.5),  # evaluation: the chosen head is not the best here
            row(3, (3, 2, 2, 3), (3, 2, 1, 1), (3, 2, 1, 2), 0.0)]
    t = alignment_table(frame(rows))
    assert len(t) == 1 and t.loc[0, "best_head"] == "L0H1" and t.loc[0, "n"] == 2
    # L0H1 on the evaluation rows: a=8, s=6, a_and_s=3, a_and_p=4 -> AER 1 - 7/14; precision 4/8; recall 3/6
    assert t.loc[0, "aer_best_head"] == pytest.approx(0.5)
    assert t.loc[0, "precision_best_head"] == pytest.approx(0.5) and t.loc[0, "recall_best_head"] == pytest.approx(0.5)
    assert t.loc[0, "aer_mean_heads"] == pytest.approx(1 - (4 + 5) / (8 + 6))  # a ratio of sums, not a mean of ratios
    assert t.loc[0, "translation_accuracy"] == pytest.approx(0.25)


def test_the_committed_alignment_report_matches_its_config():
    import json

    import pandas as pd
    import yaml

    from conftest import ROOT

    manifest = json.loads((ROOT / "reports" / "alignment" / "manifest.json").read_text())
    config = yaml.safe_load((ROOT / "configs" / "alignment.yaml").read_text())
    assert manifest["config"]["tasks"]["alignment"]["lengths"] == config["tasks"]["alignment"]["lengths"]
    table = pd.read_csv(ROOT / "reports" / "alignment" / "alignment.csv")
    full, flash = (table[table["pairing"] == f"rotary/{a}"].drop(columns="pairing").reset_index(drop=True)
                   for a in ("full", "flash"))
    pd.testing.assert_frame_equal(full, flash)  # the exact variants agree count for count
    assert len(table) == 2 * 5 * 2 * 3 * 3
