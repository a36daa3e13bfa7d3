"""Attention on the needle: the evidence mass is the captured weights summed over the needle, out_of_reach is the
mask's verdict, and every row of a run carries its diagnosis."""

from __future__ import annotations

import pytest
import torch

from lceval.attention import build_attention
from lceval.attention.capture import capturing
from lceval.diagnosis import diagnose, out_of_reach
from lceval.models.checkpoint import load_checkpoint, zoo_path
from lceval.registry import tasks
from lceval.scoring import score_batch

VARIANTS = {"full": {}, "flash": {}, "sliding_window": {"window": 24},
            "sparse": {"block": 16, "local_blocks": 2, "global_blocks": 1}, "linear": {}}


def _niah(model_tok, lengths=(192,), samples=2, depths=(0.0, 1.0)):
    cls = tasks.get("niah")
    task = cls(cls.Config(lengths=list(lengths), depths=list(depths), samples=samples), seed=0)
    return task, [s for c in task.cells() for s in task.cell_samples(c, model_tok, samples)]


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("mode", ["auto", "generate"])
def test_evidence_mass_is_the_captured_weights_summed_over_the_needle(name, mode):
    """Recorded in the scoring pass itself (teacher forced or generated): each layer's and head's mass equals an
    independent capture of the predicting row's weights summed over the needle sentence's tokens."""
    model, tok, _ = load_checkpoint(zoo_path("zoo:quickstart-rotary"))
    model.set_attention(build_attention(name, **VARIANTS[name]))
    task, samples = _niah(tok)
    batch = samples[:1]
    got = score_batch(model, task, batch, tok, mode=mode)[0]
    stats = got.meta["attention"]
    ids = torch.tensor([batch[0].input_ids])
    T = ids.shape[1]
    with torch.no_grad(), capturing(model, rows=[T - 1]) as cap:
        model.hidden(ids)
    (a, b), = batch[0].meta["_evidence"]["needle"]
    want = cap.stacked()[:, 0, :, 0, a:b].sum(-1)  # (L, H)
    assert torch.allclose(torch.tensor(stats["evidence_mass"]), want, atol=6e-5)
    assert stats["best_head"] == list(divmod(int(want.argmax()), want.shape[1]))
    tops = cap.stacked()[:, 0, :, 0].argmax(-1)  # (L, H)
    assert stats["top_key_in_needle"] == bool(((tops >= a) & (tops < b)).any())


@pytest.mark.parametrize("name,params", [("sliding_window", {"window": 24}), ("sliding_window", {"window": 7}),
                                         ("sparse", {"block": 16, "local_blocks": 2, "global_blocks": 1}),
                                         ("sparse", {"block": 8, "local_blocks": 1, "global_blocks": 0, "stride": 3}),
                                         ("flash", {}), ("linear", {})])
def test_out_of_reach_is_what_the_mask_hides(name, params):
    """out_of_reach agrees with the variant's weights: a key the mask hides gets exactly zero weight."""
    attn = build_attention(name, **params)
    torch.manual_seed(1)
    T = 97
    q, k, v = (torch.randn(1, 2, T, 8) for _ in range(3))
    w = attn.weights(q, k, v, causal=True, rows=[T - 1])[0, 0, 0]  # (S,)
    rng = torch.Generator().manual_seed(2)
    checked = {True: 0, False: 0}
    for _ in range(60):
        a = int(torch.randint(0, T - 4, (1,), generator=rng))
        b = a + int(torch.randint(1, 5, (1,), generator=rng))
        hidden = bool((w[a:b] == 0).all())
        assert out_of_reach(attn, T, [[a, b]]) == hidden, (a, b)
        checked[hidden] += 1
    if name in ("sliding_window", "sparse"):
        assert checked[True] and checked[False]  # both verdicts were exercised


def test_diagnosis_rules():
    hit = {"best_mass": 0.7, "top_key_in_needle": False}
    top = {"best_mass": 0.1, "top_key_in_needle": True}
    none = {"best_mass": 0.1, "top_key_in_needle": False}
    assert diagnose(True, none, True, 0.5) == "found"
    assert diagnose(False, hit, True, 0.5) == "out_of_reach"
    assert diagnose(False, hit, False, 0.5) == "attended_but_wrong"
    assert diagnose(False, top, False, 0.5) == "attended_but_wrong"
    assert diagnose(False, none, False, 0.5) == "not_attended"
    assert diagnose(False, hit, False, 0.8) == "not_attended"


def test_a_run_diagnoses_every_row_and_reports_why(quickstart_rotary, write_config, tmp_path):
    import json

    from conftest import run_flash_and_window
    from lceval.store import read_rows

    rows = read_rows(run_flash_and_window(quickstart_rotary, write_config, tmp_path / "r"))
    assert all(r["diagnosis"] in ("found", "attended_but_wrong", "not_attended", "out_of_reach") for r in rows)
    assert all((r["diagnosis"] == "found") == r["correct"] for r in rows)
    window = [r for r in rows if "sliding_window" in r["pairing"]]
    far = [r for r in window if r["meta"]["distance"] > 16 + 8]  # the needle sentence ends before the window
    assert far and all(r["diagnosis"] in ("out_of_reach", "found") for r in far)
    assert any(r["diagnosis"] == "out_of_reach" for r in far)
    table = (tmp_path / "r" / "report" / "diagnosis.csv").read_text().splitlines()
    assert table[0] == "task,pairing,context_length,depth,n,found,attended_but_wrong,not_attended,out_of_reach"
    assert len(table) == 1 + 2 * 2 * 2  # pairings x lengths x depths
    heads = (tmp_path / "r" / "report" / "retrieval_heads.csv").read_text().splitlines()
    assert heads[0] == "model,pairing,layer,head,score,n" and len(heads) == 1 + 2 * 2 * 2
    plain = read_rows(run_flash_and_window(quickstart_rotary, write_config, tmp_path / "off",
                                           "--set", "run.capture=false"))
    assert all(r["diagnosis"] in (None, "found", "out_of_reach") and "attention" not in r["meta"] for r in plain)
    assert {r["sample_id"]: r["prediction"] for r in plain} == {r["sample_id"]: r["prediction"] for r in rows}
    assert json.loads((tmp_path / "off" / "manifest.json").read_text())["run_id"] != json.loads(
        (tmp_path / "r" / "manifest.json").read_text())["run_id"]
